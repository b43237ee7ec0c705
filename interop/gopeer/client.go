package main

// The client side of the discovery protocol as ion's nodes use it (nats-discovery
// v0.3.0 pkg/client): requests, get, keep-alive, and an event collector.

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ionTimeout is nats-discovery's timeout for every request.
const ionTimeout = 15 * time.Second

// keepAlivePeriod is nats-discovery's DefaultLivecycle: one update every 2 s.
const keepAlivePeriod = 2 * time.Second

// send makes one save, update or delete request for n and decodes the Response.
func send(nc *nats.Conn, action string, n Node, timeout time.Duration) (Response, error) {
	data, err := encodeGob(Request{Action: action, Node: n})
	if err != nil {
		return Response{}, err
	}
	msg, err := nc.Request(nodeSubject(n), data, timeout)
	if err != nil {
		return Response{}, err
	}
	var r Response
	if err := decodeGob(msg.Data, &r); err != nil {
		return Response{}, fmt.Errorf("reply is not a gob Response: %w", err)
	}
	return r, nil
}

// sendOK is send that treats Success=false as an error.
func sendOK(nc *nats.Conn, action string, n Node, timeout time.Duration) error {
	r, err := send(nc, action, n, timeout)
	if err != nil {
		return err
	}
	if !r.Success {
		return fmt.Errorf("%s refused: %q", action, r.Reason)
	}
	return nil
}

// get lists the nodes of service ("*" for all) with params, as nats-discovery's Get.
func get(nc *nats.Conn, service string, params map[string]interface{}, timeout time.Duration) ([]Node, error) {
	data, err := encodeGob(Request{Action: ActionGet, Service: service, Params: params})
	if err != nil {
		return nil, err
	}
	msg, err := nc.Request(getSubject(service), data, timeout)
	if err != nil {
		return nil, err
	}
	var g GetResponse
	if err := decodeGob(msg.Data, &g); err != nil {
		return nil, fmt.Errorf("reply is not a gob GetResponse: %w", err)
	}
	return g.Nodes, nil
}

// keepAlive registers n as a Go node does (save, then update every period) until stop
// is closed, then deletes it (unless the connection is gone) and closes done.
type keepAlive struct {
	stop chan struct{}
	done chan struct{}
}

func startKeepAlive(nc *nats.Conn, n Node, period time.Duration, onError func(error)) *keepAlive {
	k := &keepAlive{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		report := func(err error) {
			if err != nil && onError != nil {
				onError(err)
			}
		}
		report(sendOK(nc, ActionSave, n, ionTimeout))
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-k.stop:
				if !nc.IsClosed() {
					report(sendOK(nc, ActionDelete, n, 5*time.Second))
				}
				return
			case <-t.C:
				report(sendOK(nc, ActionUpdate, n, ionTimeout))
			}
		}
	}()
	return k
}

// end stops the keep-alive and waits for its delete.
func (k *keepAlive) end() {
	close(k.stop)
	<-k.done
}

// event is one message received on node.discovery.…
type event struct {
	at      time.Time
	subject string
	req     Request
	err     error
}

// eventLog collects every event of a subscription.
type eventLog struct {
	mu     sync.Mutex
	events []event
	sub    *nats.Subscription
}

func collectEvents(nc *nats.Conn, subject string) (*eventLog, error) {
	l := &eventLog{}
	sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
		e := event{at: time.Now(), subject: m.Subject}
		e.err = decodeGob(m.Data, &e.req)
		l.mu.Lock()
		l.events = append(l.events, e)
		l.mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	sub.SetPendingLimits(-1, -1)
	l.sub = sub
	return l, nc.Flush()
}

// find returns the first event matching pred, waiting up to timeout for it.
func (l *eventLog) find(pred func(event) bool, timeout time.Duration) (event, bool) {
	end := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		for _, e := range l.events {
			if e.err == nil && pred(e) {
				l.mu.Unlock()
				return e, true
			}
		}
		l.mu.Unlock()
		if time.Now().After(end) {
			return event{}, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// of matches the events of one node (by DC and NID), optionally of one action.
func of(n Node, action string) func(event) bool {
	return func(e event) bool {
		return e.req.Node.DC == n.DC && e.req.Node.NID == n.NID && (action == "" || e.req.Action == action)
	}
}

const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// randomString is ion's RandomString: n letters or digits.
func randomString(n int) string {
	b := make([]byte, n)
	for i := range b {
		x, err := rand.Int(rand.Reader, big.NewInt(int64(len(alnum))))
		if err != nil {
			panic(err)
		}
		b[i] = alnum[x.Int64()]
	}
	return string(b)
}

var errNoNodes = errors.New("no node in the answer")
