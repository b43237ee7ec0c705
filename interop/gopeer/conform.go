package main

// conform: 15 protocol checks against a running registry, as unchanged Go ion nodes
// rely on it (discovery.md's contract). It registers nodes of the services "conform"
// and "signal" only (never "rtc", which islb places per session and keeps out of
// "get *"), with NIDs unique to the run, and deletes what it registered.

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// reqTimeout bounds each request of the checks (ion's own is 15 s; a conforming
// registry answers in milliseconds).
const reqTimeout = 5 * time.Second

// eventTimeout is how long an event may take to arrive after the reply.
const eventTimeout = 3 * time.Second

type conformer struct {
	nc     *nats.Conn
	passed int
	failed int
}

func (c *conformer) check(name string, err error, detail string) bool {
	if err != nil {
		c.failed++
		fmt.Fprintf(stdout, "FAIL %s: %v\n", name, err)
		return false
	}
	c.passed++
	if detail != "" {
		fmt.Fprintf(stdout, "PASS %s (%s)\n", name, detail)
	} else {
		fmt.Fprintf(stdout, "PASS %s\n", name)
	}
	return true
}

func runConform(args []string) int {
	fs := newFlags("conform", "")
	conn := addConnFlags(fs)
	expire := fs.Duration("expire", 5*time.Second, "the registry's expiry: a silent node must be deleted within it plus a grace")
	skipBad := fs.Bool("skip-bad", false, "skip the malformed-input check (a Go registry stops answering after it)")
	fs.Parse(args)
	if *expire <= 0 {
		fatalf("-expire must be positive")
	}
	nc := conn.mustConnect("gopeer conform")
	defer nc.Close()
	c := &conformer{nc: nc}
	c.run(*expire, *skipBad)
	fmt.Fprintf(stdout, "%d passed, %d failed\n", c.passed, c.failed)
	if c.failed > 0 {
		return 1
	}
	return 0
}

// conformExtra carries one value of most types a Go node may put into ExtraInfo.
func conformExtra() map[string]interface{} {
	return map[string]interface{}{
		"region": "eu",
		"load":   0.25,
		"peers":  int64(3),
		"slots":  int(40),
		"up":     true,
		"i8":     int8(-5),
		"u16":    uint16(65535),
		"u64":    uint64(1) << 63,
		"f32":    float32(1.5),
		"blob":   []byte{0, 1, 2, 255},
		"tags":   []string{"a", "b"},
		"list":   []interface{}{"x", int64(1), false},
		"map":    map[string]interface{}{"cpu": 0.5, "streams": int(12)},
	}
}

func conformNode(service, nid string) Node {
	return Node{
		DC:        "dc1",
		Service:   service,
		NID:       nid,
		RPC:       RPC{Protocol: "nats-grpc", Addr: "nats://127.0.0.1:4222", Params: map[string]string{"k": "v", "zone": "b"}},
		ExtraInfo: conformExtra(),
	}
}

func (c *conformer) run(expire time.Duration, skipBad bool) {
	run := strings.ToLower(randomString(6))
	a := conformNode("conform", "conform-a-"+run) // saved, updated, deleted
	b := conformNode("signal", "conform-b-"+run)  // registered by an update
	silent := conformNode("conform", "conform-silent-"+run)
	alive := conformNode("signal", "conform-alive-"+run)
	registered := []Node{a, b, silent, alive}
	defer func() {
		for _, n := range registered {
			send(c.nc, ActionDelete, n, reqTimeout)
		}
	}()

	events, err := collectEvents(c.nc, "node.discovery.>")
	if err != nil {
		fatalf("subscribing to events: %v", err)
	}

	// 1, 2: save.
	_, err = c.expectSuccess(ActionSave, a)
	c.check("save replies Success", err, "")
	c.check("save publishes a save event on node.discovery.conform.<dc>.<nid>", c.expectEvent(events, a, ActionSave), "")

	// 3, 4: update of an unknown node is a save.
	_, err = c.expectSuccess(ActionUpdate, b)
	if err == nil {
		err = c.expectListed("signal", nil, b, true)
	}
	c.check("update of an unknown node registers it", err, "")
	err = c.expectEvent(events, b, "")
	detail := ""
	if e, ok := events.find(of(b, ""), 0); ok && err == nil {
		if e.req.Action != ActionSave && e.req.Action != ActionUpdate {
			err = fmt.Errorf("event action %q, want save (or update, as the Go registry)", e.req.Action)
		}
		detail = "action " + e.req.Action
	}
	c.check("update of an unknown node publishes an event", err, detail)

	// 5, 6: get returns the node exactly as it was sent.
	params := map[string]interface{}{"nid": a.NID, "content-type": "application/grpc", "user-agent": "grpc-go/1.41.0"}
	nodes, err := get(c.nc, "conform", params, reqTimeout)
	var got *Node
	if err == nil {
		got = findNode(nodes, a)
		if got == nil {
			err = fmt.Errorf("%s not in the answer %s", a.NID, nids(nodes))
		} else {
			err = sameFields(*got, a)
		}
	}
	c.check("get conform (with a signal node's params) lists the saved node with every field", err, "")
	err = fmt.Errorf("no node to compare")
	if got != nil {
		err = sameExtra(got.ExtraInfo, a.ExtraInfo)
	}
	c.check("get keeps the exact Go type of every ExtraInfo value", err, fmt.Sprintf("%d values", len(a.ExtraInfo)))

	// 7, 8: services.
	nodes, err = get(c.nc, "conform", nil, reqTimeout)
	if err == nil {
		for _, n := range nodes {
			if n.Service != "conform" {
				err = fmt.Errorf("%s of service %q listed", n.NID, n.Service)
				break
			}
		}
	}
	if err == nil {
		err = c.expectListed("signal", nil, a, false)
	}
	c.check("get conform does not list other services", err, "")
	nodes, err = get(c.nc, "*", map[string]interface{}{}, reqTimeout)
	if err == nil {
		for _, want := range []Node{a, b} {
			if findNode(nodes, want) == nil {
				err = fmt.Errorf("%s (%s) not in %s", want.NID, want.Service, nids(nodes))
				break
			}
		}
	}
	c.check("get * lists every service", err, fmt.Sprintf("%d nodes", len(nodes)))

	// 9: an update carries new data.
	a2 := a
	a2.ExtraInfo = conformExtra()
	a2.ExtraInfo["load"] = 0.75
	a2.ExtraInfo["peers"] = int64(4)
	a2.RPC.Params = map[string]string{"k": "w"}
	_, err = c.expectSuccess(ActionUpdate, a2)
	if err == nil {
		nodes, err = get(c.nc, "conform", nil, reqTimeout)
		if n := findNode(nodes, a2); err == nil && n == nil {
			err = fmt.Errorf("%s no longer listed", a.NID)
		} else if err == nil {
			err = sameFields(*n, a2)
			if err == nil {
				err = sameExtra(n.ExtraInfo, a2.ExtraInfo)
			}
		}
	}
	c.check("update of a known node keeps it and carries its new data", err, "")

	// 10: bad input.
	if skipBad {
		fmt.Fprintln(stdout, "SKIP registry still answers after malformed messages (-skip-bad)")
	} else {
		detail, err := c.malformed(a2)
		c.check("registry still answers after malformed messages", err, detail)
	}

	// 11, 12, 13: delete.
	_, err = c.expectSuccess(ActionDelete, a2)
	c.check("delete replies Success", err, "")
	err = c.expectEvent(events, a2, ActionDelete)
	c.check("delete publishes a delete event", err, "")
	err = c.expectListed("conform", nil, a2, false)
	if err == nil {
		err = c.expectListed("*", map[string]interface{}{}, a2, false)
	}
	c.check("get no longer lists the deleted node", err, "")

	// 14, 15: expiry.
	c.expiry(events, silent, alive, expire)
}

// expectSuccess sends action for n and wants Success.
func (c *conformer) expectSuccess(action string, n Node) (Response, error) {
	r, err := send(c.nc, action, n, reqTimeout)
	if err == nil && !r.Success {
		err = fmt.Errorf("Success=false, Reason %q", r.Reason)
	}
	return r, err
}

// expectEvent waits for an event of n (of action, or any action if ""), on n's event
// subject, carrying n exactly.
func (c *conformer) expectEvent(events *eventLog, n Node, action string) error {
	e, ok := events.find(of(n, action), eventTimeout)
	if !ok {
		if action == "" {
			return fmt.Errorf("no event for %s within %v", n.NID, eventTimeout)
		}
		return fmt.Errorf("no %s event for %s within %v", action, n.NID, eventTimeout)
	}
	if e.subject != eventSubject(n) {
		return fmt.Errorf("event on %s, want %s", e.subject, eventSubject(n))
	}
	if action == ActionDelete {
		// A delete carries the node; its data may be the last known one.
		if e.req.Node.Service != n.Service {
			return fmt.Errorf("delete event node of service %q", e.req.Node.Service)
		}
		return nil
	}
	if err := sameFields(e.req.Node, n); err != nil {
		return fmt.Errorf("event node: %w", err)
	}
	return sameExtra(e.req.Node.ExtraInfo, n.ExtraInfo)
}

// expectListed checks whether get service lists n.
func (c *conformer) expectListed(service string, params map[string]interface{}, n Node, listed bool) error {
	nodes, err := get(c.nc, service, params, reqTimeout)
	if err != nil {
		return fmt.Errorf("get %s: %w", service, err)
	}
	if found := findNode(nodes, n) != nil; found != listed {
		if listed {
			return fmt.Errorf("get %s does not list %s: %s", service, n.NID, nids(nodes))
		}
		return fmt.Errorf("get %s still lists %s", service, n.NID)
	}
	return nil
}

// malformed sends payloads a Go registry chokes on and wants an error reply to each and
// correct answers afterwards.
func (c *conformer) malformed(known Node) (string, error) {
	save := mustGob(Request{Action: ActionSave, Node: known})
	unknown := mustGob(Request{Action: "explode", Node: known})
	bad := []struct {
		name string
		data []byte
	}{
		{"not gob", []byte("this is not gob")},
		{"truncated", save[:len(save)/2]},
		{"empty", nil},
		{"unknown action", unknown},
	}
	var answered []string
	for _, m := range bad {
		msg, err := c.nc.Request(nodeSubject(known), m.data, reqTimeout)
		if err != nil {
			return "", fmt.Errorf("%s: no reply: %v", m.name, err)
		}
		var r Response
		if err := decodeGob(msg.Data, &r); err != nil {
			return "", fmt.Errorf("%s: the reply is not a gob Response: %v", m.name, err)
		}
		if r.Success || r.Reason == "" {
			return "", fmt.Errorf("%s: reply Success=%v Reason %q, want Success=false with a reason", m.name, r.Success, r.Reason)
		}
		answered = append(answered, m.name)
	}
	// Still serving: a get and a keep-alive.
	if err := c.expectListed("conform", nil, known, true); err != nil {
		return "", fmt.Errorf("after the bad input: %w", err)
	}
	if _, err := c.expectSuccess(ActionUpdate, known); err != nil {
		return "", fmt.Errorf("update after the bad input: %w", err)
	}
	return "error replies to: " + strings.Join(answered, ", "), nil
}

// expiry saves silent once and keeps alive alive; silent must get its delete event within
// expire plus a grace (not before expire) and leave get, alive must stay.
func (c *conformer) expiry(events *eventLog, silent, alive Node, expire time.Duration) {
	period := keepAlivePeriod
	if p := expire / 3; p < period {
		period = p
	}
	ka := startKeepAlive(c.nc, alive, period, nil)
	defer ka.end()
	_, err := c.expectSuccess(ActionSave, silent)
	savedAt := time.Now()
	limit := 2*expire + 2*time.Second
	detail := ""
	if err == nil {
		e, ok := events.find(of(silent, ActionDelete), limit)
		took := e.at.Sub(savedAt)
		detail = fmt.Sprintf("took %.2fs, expire %v", took.Seconds(), expire)
		switch {
		case !ok:
			err = fmt.Errorf("no delete event within %v (expire %v)", limit, expire)
		case e.subject != eventSubject(silent):
			err = fmt.Errorf("delete event on %s, want %s", e.subject, eventSubject(silent))
		case took < expire-100*time.Millisecond:
			err = fmt.Errorf("expired after %.2fs, before the expiry of %v", took.Seconds(), expire)
		default:
			err = c.expectListed("conform", nil, silent, false)
		}
	}
	c.check("silent node expires with a delete event and leaves get", err, detail)

	// The kept-alive node lived through the same period and some more.
	wait := expire + expire/2
	if wait < expire+time.Second {
		wait = expire + time.Second
	}
	if d := time.Until(savedAt.Add(wait)); d > 0 {
		time.Sleep(d)
	}
	err = nil
	if e, ok := events.find(of(alive, ActionDelete), 0); ok {
		err = fmt.Errorf("expired although it kept alive every %v (delete after %v)", period, e.at.Sub(savedAt).Round(10*time.Millisecond))
	} else {
		err = c.expectListed("signal", nil, alive, true)
	}
	c.check("a node that keeps alive is not expired", err, fmt.Sprintf("update every %v for %.1fs", period.Round(time.Millisecond), time.Since(savedAt).Seconds()))
}

func findNode(nodes []Node, n Node) *Node {
	for i := range nodes {
		if nodes[i].DC == n.DC && nodes[i].NID == n.NID {
			return &nodes[i]
		}
	}
	return nil
}

func nids(nodes []Node) string {
	out := make([]string, 0, len(nodes))
	for _, n := range nodes {
		out = append(out, n.NID)
	}
	sort.Strings(out)
	if len(out) > 12 {
		return fmt.Sprintf("[%s ... %d nodes]", strings.Join(out[:12], " "), len(out))
	}
	return "[" + strings.Join(out, " ") + "]"
}

// sameFields compares everything but ExtraInfo.
func sameFields(got, want Node) error {
	switch {
	case got.DC != want.DC || got.Service != want.Service || got.NID != want.NID:
		return fmt.Errorf("node %s/%s/%s, want %s/%s/%s", got.DC, got.Service, got.NID, want.DC, want.Service, want.NID)
	case got.RPC.Protocol != want.RPC.Protocol || got.RPC.Addr != want.RPC.Addr:
		return fmt.Errorf("RPC %q %q, want %q %q", got.RPC.Protocol, got.RPC.Addr, want.RPC.Protocol, want.RPC.Addr)
	case !reflect.DeepEqual(got.RPC.Params, want.RPC.Params):
		return fmt.Errorf("RPC.Params %v, want %v", got.RPC.Params, want.RPC.Params)
	}
	return nil
}

// sameExtra compares ExtraInfo values with their Go types.
func sameExtra(got, want map[string]interface{}) error {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		g, ok := got[k]
		if !ok {
			return fmt.Errorf("ExtraInfo[%q] missing", k)
		}
		if !reflect.DeepEqual(g, want[k]) {
			return fmt.Errorf("ExtraInfo[%q] = %T %v, want %T %v", k, g, g, want[k], want[k])
		}
	}
	if len(got) != len(want) {
		return fmt.Errorf("ExtraInfo has %d values, want %d", len(got), len(want))
	}
	return nil
}
