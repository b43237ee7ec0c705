package main

// bench-update, bench-get and bench-codec: the registry's keep-alive throughput, its get
// latency, and Go's own gob cost, measured from a Go client as ion's nodes are.

import (
	"bytes"
	"flag"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// benchNode is the node shape the benches register: an ion SFU's registration plus one
// RPC param and three ExtraInfo values (a string, a float64, an int64).
func benchNode(service, prefix string, i int) Node {
	return Node{
		DC:        fmt.Sprintf("dc%d", i%3),
		Service:   service,
		NID:       fmt.Sprintf("%s-%d", prefix, i),
		RPC:       RPC{Protocol: "nats-grpc", Addr: "nats://127.0.0.1:4222", Params: map[string]string{"k": "v"}},
		ExtraInfo: map[string]interface{}{"region": "eu", "load": 0.25, "peers": int64(3)},
	}
}

// latencies gathers one duration per request from many goroutines.
type latencies struct {
	mu  sync.Mutex
	all []time.Duration
}

func (l *latencies) add(part []time.Duration) {
	l.mu.Lock()
	l.all = append(l.all, part...)
	l.mu.Unlock()
}

// quantiles is "p50=… p99=… p999=…" of the gathered durations.
func (l *latencies) quantiles() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	sort.Slice(l.all, func(i, j int) bool { return l.all[i] < l.all[j] })
	q := func(f float64) time.Duration {
		if len(l.all) == 0 {
			return 0
		}
		return l.all[int(float64(len(l.all)-1)*f)]
	}
	return fmt.Sprintf("p50=%v p99=%v p999=%v", q(0.50), q(0.99), q(0.999))
}

// firstError keeps the first of many errors.
type firstError struct {
	mu  sync.Mutex
	err error
}

func (f *firstError) set(err error) {
	f.mu.Lock()
	if f.err == nil {
		f.err = err
	}
	f.mu.Unlock()
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// parallel runs f(i) for i in [0, n) on c goroutines and returns the errors' count and
// the first error.
func parallel(n, c int, f func(i int) error) (int, error) {
	var next, failed int64
	var first firstError
	var wg sync.WaitGroup
	for g := 0; g < c; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					atomic.AddInt64(&failed, 1)
					first.set(err)
				}
			}
		}()
	}
	wg.Wait()
	return int(failed), first.get()
}

// register saves nodes with c concurrent requests; failures are reported, not fatal.
func register(nc *nats.Conn, nodes []Node, c int, what string) {
	failed, err := parallel(len(nodes), c, func(i int) error {
		return sendOK(nc, ActionSave, nodes[i], ionTimeout)
	})
	if failed > 0 {
		fmt.Fprintf(stderr, "%s: %d of %d saves failed, first: %v\n", what, failed, len(nodes), err)
	}
}

// unregister deletes nodes (with -delete; by default they fall silent and expire, as an
// ion node's registration does: ion never sends delete).
func unregister(nc *nats.Conn, nodes []Node, c int) {
	parallel(len(nodes), c, func(i int) error {
		return sendOK(nc, ActionDelete, nodes[i], 5*time.Second)
	})
}

type benchFlags struct {
	conn   *connFlags
	n      *int
	c      *int
	d      *time.Duration
	delete *bool
}

func addBenchFlags(fs *flag.FlagSet, conn *connFlags) benchFlags {
	return benchFlags{
		conn:   conn,
		n:      fs.Int("n", 1000, "nodes to register"),
		c:      fs.Int("c", 16, "concurrent requesters"),
		d:      fs.Duration("d", 5*time.Second, "duration of the measurement"),
		delete: fs.Bool("delete", false, "delete the nodes at the end (by default they are left to expire, as ion's nodes are)"),
	}
}

// cleanup deletes the bench's nodes if asked to.
func (b benchFlags) cleanup(nc *nats.Conn, nodes []Node) {
	if *b.delete {
		unregister(nc, nodes, *b.c)
	}
}

func (b benchFlags) validate() {
	if *b.n < 1 || *b.c < 1 || *b.d <= 0 {
		fatalf("-n and -c must be at least 1, -d positive")
	}
}

// loadResult is what runLoad measured.
type loadResult struct {
	requests, errs int64
	elapsed        time.Duration
	lat            *latencies
	firstErr       *firstError
}

// String is the report line's figures: requests= errors= rps= p50= p99= p999=.
func (r loadResult) String() string {
	return fmt.Sprintf("requests=%d errors=%d rps=%.0f %s",
		r.requests, r.errs, float64(r.requests)/r.elapsed.Seconds(), r.lat.quantiles())
}

func (r loadResult) reportFirstError(bench string) {
	if err := r.firstErr.get(); err != nil {
		fmt.Fprintf(stderr, "%s: first error: %v\n", bench, err)
	}
}

// runLoad runs one request at a time on each of c requesters for d, each on a NATS
// connection of its own (as separate ion nodes are), and times the ones that succeed.
func runLoad(conn *connFlags, name string, c int, d time.Duration, one func(nc *nats.Conn) error) loadResult {
	conns := make([]*nats.Conn, c)
	for g := range conns {
		conns[g] = conn.mustConnect(fmt.Sprintf("%s %d", name, g))
		defer conns[g].Close()
	}
	res := loadResult{lat: &latencies{}, firstErr: &firstError{}}
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for g := 0; g < c; g++ {
		wg.Add(1)
		go func(nc *nats.Conn) {
			defer wg.Done()
			mine := make([]time.Duration, 0, 4096)
			for time.Now().Before(end) {
				t0 := time.Now()
				err := one(nc)
				took := time.Since(t0)
				atomic.AddInt64(&res.requests, 1)
				if err != nil {
					atomic.AddInt64(&res.errs, 1)
					res.firstErr.set(err)
					continue
				}
				mine = append(mine, took)
			}
			res.lat.add(mine)
		}(conns[g])
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// requestTimeout for benches: long enough for a loaded registry, short enough that a
// request lost with a killed replica does not stall a requester for ion's 15 s.
const benchTimeout = 5 * time.Second

// setupBench parses a bench's flags, connects, and registers its nodes, of `service`
// (empty: a service of their own, named like their NIDs' prefix).
func setupBench(name string, args []string, service string) (benchFlags, *nats.Conn, []Node) {
	fs := newFlags(name, "")
	b := addBenchFlags(fs, addConnFlags(fs))
	fs.Parse(args)
	b.validate()
	nc := b.conn.mustConnect("gopeer " + name)
	prefix := "bench-" + strings.ToLower(randomString(4))
	if service == "" {
		service = prefix
	}
	nodes := make([]Node, *b.n)
	for i := range nodes {
		nodes[i] = benchNode(service, prefix, i)
	}
	register(nc, nodes, *b.c, name)
	return b, nc, nodes
}

func runBenchUpdate(args []string) int {
	b, nc, nodes := setupBench("bench-update", args, "rtc")
	defer nc.Close()

	var next uint64
	res := runLoad(b.conn, "gopeer bench-update", *b.c, *b.d, func(nc *nats.Conn) error {
		n := nodes[int(atomic.AddUint64(&next, 1)-1)%len(nodes)]
		// Encoded per request with a fresh encoder, as ion's KeepAlive does.
		msg, err := nc.Request(nodeSubject(n), mustGob(Request{Action: ActionUpdate, Node: n}), benchTimeout)
		if err != nil {
			return err
		}
		var r Response
		if err := decodeGob(msg.Data, &r); err != nil {
			return err
		}
		if !r.Success {
			return fmt.Errorf("update refused: %q", r.Reason)
		}
		return nil
	})
	fmt.Fprintf(stdout, "update: %s\n", res)
	res.reportFirstError("bench-update")
	b.cleanup(nc, nodes)
	return 0
}

func runBenchGet(args []string) int {
	// A service of its own, so the answer is exactly these nodes ("rtc" is placed).
	b, nc, nodes := setupBench("bench-get", args, "")
	defer nc.Close()
	service := nodes[0].Service
	defer b.cleanup(nc, nodes)
	query := mustGob(Request{Action: ActionGet, Service: service})

	// One answer, checked, to compare the others with and to time Go's decoding.
	msg, err := nc.Request(getSubject(service), query, ionTimeout)
	if err != nil {
		fatalf("get %s: %v", service, err)
	}
	sample := msg.Data
	var first GetResponse
	if err := decodeGob(sample, &first); err != nil {
		fatalf("get %s: %v", service, err)
	}
	if len(first.Nodes) != len(nodes) {
		fmt.Fprintf(stderr, "bench-get: the answer lists %d nodes, %d registered\n", len(first.Nodes), len(nodes))
	}
	valid := func(data []byte) error {
		if len(data) == len(sample) {
			return nil // same nodes, maybe in another order
		}
		var g GetResponse
		if err := decodeGob(data, &g); err != nil {
			return err
		}
		if len(g.Nodes) != len(first.Nodes) {
			return fmt.Errorf("answer of %d nodes, %d before", len(g.Nodes), len(first.Nodes))
		}
		return nil
	}

	res := runLoad(b.conn, "gopeer bench-get", *b.c, *b.d, func(nc *nats.Conn) error {
		msg, err := nc.Request(getSubject(service), query, benchTimeout)
		if err != nil {
			return err
		}
		return valid(msg.Data)
	})
	fmt.Fprintf(stdout, "get(%d nodes): %s\n", len(first.Nodes), res)
	perDecode := timePerOp(200*time.Millisecond, 3, func() {
		var g GetResponse
		decodeGob(sample, &g)
	})
	fmt.Fprintf(stdout, "reply %d bytes, %d nodes; Go decodes one in %v (not included above)\n",
		len(sample), len(first.Nodes), perDecode)
	res.reportFirstError("bench-get")
	return 0
}

// timePerOp runs op for about d (and at least min times) and returns its mean duration,
// rounded to what is meaningful.
func timePerOp(d time.Duration, min int, op func()) time.Duration {
	start := time.Now()
	n := 0
	for n < min || time.Since(start) < d {
		op()
		n++
	}
	per := time.Since(start) / time.Duration(n)
	switch {
	case per >= time.Millisecond:
		return per.Round(10 * time.Microsecond)
	case per >= time.Microsecond:
		return per.Round(time.Nanosecond)
	}
	return per
}

// codecRequest is the typical keep-alive the codec bench times: an update of an SFU with
// two RPC params and five ExtraInfo values.
func codecRequest() Request {
	return Request{
		Action: ActionUpdate,
		Node: Node{
			DC:      "eu-west",
			Service: "rtc",
			NID:     "sfu-2",
			RPC: RPC{
				Protocol: "nats-grpc",
				Addr:     "nats://10.0.0.7:4222",
				Params:   map[string]string{"username": "foo", "password": "bar"},
			},
			ExtraInfo: map[string]interface{}{
				"str": "x", "f64": 0.75, "int": 42, "i64": int64(-7), "bool": true,
			},
		},
	}
}

func runBenchCodec(args []string) int {
	fs := newFlags("bench-codec", "")
	d := fs.Duration("d", 5*time.Second, "duration (half encoding, half decoding)")
	fs.Parse(args)
	if *d <= 0 {
		fatalf("-d must be positive")
	}
	req := codecRequest()
	data := mustGob(req)
	var sink int
	enc := timePerOp(*d/2, 100, func() {
		var b bytes.Buffer
		// A fresh encoder per message, as nats-discovery does.
		if err := gobEncoder(&b).Encode(req); err != nil {
			panic(err)
		}
		sink += b.Len()
	})
	dec := timePerOp(*d/2, 100, func() {
		var r Request
		if err := decodeGob(data, &r); err != nil {
			panic(err)
		}
		sink += len(r.Action)
	})
	_ = sink
	fmt.Fprintf(stdout, "go gob Request (%d bytes): encode %v/op, decode %v/op\n", len(data), enc, dec)
	return 0
}
