package main

// signal-sim: ion's signal nodes choosing an SFU for each client call exactly as ion
// v1.10 does (pkg/ion/node.go NewNatsRPCClient, see ion.md 3.3-3.5), and keepalive:
// nodes that stay registered (e.g. fake SFUs for signal-sim).

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// signalNode is one simulated ion signal node: its own NATS connection, its own
// registration, and its neighbour map.
type signalNode struct {
	nc         *nats.Conn
	self       Node
	ka         *keepAlive
	mu         sync.Mutex
	neighbours map[string]Node // by NID only, as ion keys them
}

func startSignalNode(conn *connFlags) (*signalNode, error) {
	nid := "signal-" + randomString(6)
	nc, err := conn.connect("gopeer signal-sim " + nid)
	if err != nil {
		return nil, err
	}
	s := &signalNode{
		nc:         nc,
		self:       Node{DC: "dc1", Service: "signal", NID: nid, RPC: RPC{Protocol: "nats-grpc", Addr: *conn.url}},
		neighbours: map[string]Node{},
	}
	s.self.RPC.Addr = redactURL(s.self.RPC.Addr)
	s.ka = startKeepAlive(nc, s.self, keepAlivePeriod, func(err error) {
		fmt.Fprintf(stderr, "%s keep-alive: %v\n", nid, err)
	})
	s.watch()
	return s, nil
}

// watch is ion's Node.Watch("*"): one get of every node into the neighbour map, then
// the events. A failed get means no watching at all (ion never retries).
func (s *signalNode) watch() {
	nodes, err := get(s.nc, "*", map[string]interface{}{}, ionTimeout)
	if err != nil {
		fmt.Fprintf(stderr, "%s: get * failed (%v); like ion, it will not watch\n", s.self.NID, err)
		return
	}
	s.mu.Lock()
	for _, n := range nodes {
		s.nodeUp(n)
	}
	s.mu.Unlock()
	var sub *nats.Subscription
	sub, err = s.nc.Subscribe("node.discovery.*.>", func(m *nats.Msg) {
		var r Request
		if err := decodeGob(m.Data, &r); err != nil {
			// ion's watch goroutine returns on the first bad event.
			fmt.Fprintf(stderr, "%s: undecodable event on %s (%v); like ion, it stops watching\n", s.self.NID, m.Subject, err)
			sub.Unsubscribe()
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		switch r.Action {
		case ActionSave:
			s.nodeUp(r.Node)
		case ActionDelete:
			delete(s.neighbours, r.Node.NID)
		case ActionUpdate:
		default:
			fmt.Fprintf(stderr, "%s: event with action %q on %s; like ion, it stops watching\n", s.self.NID, r.Action, m.Subject)
			sub.Unsubscribe()
		}
	})
	if err == nil {
		err = s.nc.Flush()
	}
	if err != nil {
		fatalf("%s: subscribing to events: %v", s.self.NID, err)
	}
}

// nodeUp inserts a neighbour unless its NID is known (an entry is never overwritten).
func (s *signalNode) nodeUp(n Node) {
	if _, ok := s.neighbours[n.NID]; !ok {
		s.neighbours[n.NID] = n
	}
}

// pick is NewNatsRPCClient(service, "*", md): the last neighbour of the service in map
// order (a random one), else the first node of the registry's answer to get service
// with the call's metadata as params.
func (s *signalNode) pick(service string, md map[string]interface{}) (nid string, asked bool, err error) {
	s.mu.Lock()
	for id, n := range s.neighbours {
		if n.Service == service {
			nid = id
		}
	}
	s.mu.Unlock()
	if nid != "" {
		return nid, false, nil
	}
	nodes, err := get(s.nc, service, md, ionTimeout)
	if err != nil {
		return "", false, err
	}
	if len(nodes) == 0 {
		return "", true, errNoNodes
	}
	return nodes[0].NID, true, nil
}

func (s *signalNode) close() {
	s.ka.end()
	s.nc.Close()
}

// unsignedJWT is a token as ion's clients send it in "authorization" (no "Bearer "),
// with alg none and an empty signature.
func unsignedJWT(sid, uid string) string {
	enc := base64.RawURLEncoding
	claims, _ := json.Marshal(struct {
		SID      string   `json:"sid"`
		UID      string   `json:"uid"`
		Services []string `json:"services"`
	}{sid, uid, []string{"rtc"}})
	return enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + enc.EncodeToString(claims) + "."
}

// callMetadata is what signal passes as params: the client call's gRPC metadata, one
// string per key.
func callMetadata(room, uid string, jwt bool) map[string]interface{} {
	md := map[string]interface{}{
		":authority":   "127.0.0.1:5551",
		"content-type": "application/grpc",
		"user-agent":   "grpc-go/1.41.0",
	}
	if jwt {
		md["authorization"] = unsignedJWT(room, uid)
	} else {
		md["sid"] = room
	}
	return md
}

func runSignalSim(args []string) int {
	fs := newFlags("signal-sim", "")
	conn := addConnFlags(fs)
	signals := fs.Int("signals", 4, "simulated signal nodes (one NATS connection each)")
	rooms := fs.Int("rooms", 20, "rooms (session ids)")
	calls := fs.Int("calls", 400, "client calls, spread over the rooms and the signal nodes")
	jwt := fs.Bool("jwt", false, "carry the room in an unsigned JWT in authorization, not in a sid header")
	fs.Parse(args)
	if *signals < 1 || *rooms < 1 || *calls < 1 {
		fatalf("-signals, -rooms and -calls must be at least 1")
	}

	nodes := make([]*signalNode, *signals)
	for i := range nodes {
		s, err := startSignalNode(conn)
		if err != nil {
			fatalf("%v", err)
		}
		nodes[i] = s
	}
	defer func() {
		for _, s := range nodes {
			s.close()
		}
	}()

	run := strings.ToLower(randomString(4))
	type result struct {
		room  string
		nid   string
		asked bool
		err   error
	}
	results := make([]result, *calls)
	var wg sync.WaitGroup
	// Every signal node serves its clients concurrently.
	const perSignal = 16
	for si, s := range nodes {
		for w := 0; w < perSignal; w++ {
			wg.Add(1)
			go func(si, w int, s *signalNode) {
				defer wg.Done()
				for i := si + w*(*signals); i < *calls; i += *signals * perSignal {
					room := fmt.Sprintf("room-%s-%d", run, i%*rooms)
					uid := fmt.Sprintf("user-%d", i)
					nid, asked, err := s.pick("rtc", callMetadata(room, uid, *jwt))
					results[i] = result{room, nid, asked, err}
				}
			}(si, w, s)
		}
	}
	wg.Wait()

	answered, neighbour, failed := 0, 0, 0
	var firstErr error
	placed := map[string]map[string]int{} // room → SFU → calls
	perSFU := map[string]int{}
	for _, r := range results {
		if r.asked {
			answered++
		}
		if r.err != nil {
			failed++
			if firstErr == nil {
				firstErr = r.err
			}
			continue
		}
		if !r.asked {
			neighbour++
		}
		if placed[r.room] == nil {
			placed[r.room] = map[string]int{}
		}
		placed[r.room][r.nid]++
		perSFU[r.nid]++
	}
	split := 0
	for _, sfus := range placed {
		if len(sfus) > 1 {
			split++
		}
	}
	how := `a "sid" header`
	if *jwt {
		how = `an unsigned JWT in "authorization"`
	}
	fmt.Fprintf(stdout, "signal-sim: %d calls in %d rooms, the room in %s\n", *calls, *rooms, how)
	fmt.Fprintf(stdout, "%d calls from %d signal nodes: %d answered by the registry, %d from the neighbour map, %d failed, %d of %d rooms split over several SFUs\n",
		*calls, *signals, answered, neighbour, failed, split, len(placed))
	if len(perSFU) > 0 {
		ids := make([]string, 0, len(perSFU))
		for id := range perSFU {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		parts := make([]string, 0, len(ids))
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf("%s=%d", id, perSFU[id]))
		}
		fmt.Fprintf(stdout, "calls per SFU: %s\n", strings.Join(parts, " "))
	}
	passed, failedChecks := 0, 0
	check := func(name string, ok bool, why string) {
		if ok {
			passed++
			fmt.Fprintf(stdout, "PASS %s\n", name)
		} else {
			failedChecks++
			fmt.Fprintf(stdout, "FAIL %s: %s\n", name, why)
		}
	}
	why := ""
	if firstErr != nil {
		why = fmt.Sprintf("%d calls without a node, first: %v", failed, firstErr)
	}
	check("every call was given a node", failed == 0, why)
	check("no room split over several SFUs", split == 0 && len(placed) > 0,
		fmt.Sprintf("%d of %d rooms split", split, len(placed)))
	fmt.Fprintf(stdout, "%d passed, %d failed\n", passed, failedChecks)
	if failedChecks > 0 {
		return 1
	}
	return 0
}

func runKeepAlive(args []string) int {
	fs := newFlags("keepalive", "")
	conn := addConnFlags(fs)
	service := fs.String("service", "rtc", "service of the nodes")
	n := fs.Int("n", 4, "nodes")
	dc := fs.String("dc", "dc1", "data centre of the nodes")
	prefix := fs.String("prefix", "", `NID prefix (default "sfu" for rtc, else the service); 6 random characters follow`)
	period := fs.Duration("period", keepAlivePeriod, "time between updates")
	d := fs.Duration("d", 0, "how long to keep them alive (0: until interrupted)")
	fs.Parse(args)
	if *n < 1 || *period <= 0 {
		fatalf("-n must be at least 1, -period positive")
	}
	if *prefix == "" {
		*prefix = *service
		if *service == "rtc" {
			*prefix = "sfu"
		}
	}
	nc := conn.mustConnect("gopeer keepalive")
	defer nc.Close()
	var kas []*keepAlive
	var names []string
	for i := 0; i < *n; i++ {
		node := Node{DC: *dc, Service: *service, NID: *prefix + "-" + randomString(6),
			RPC: RPC{Protocol: "nats-grpc", Addr: redactURL(*conn.url)}}
		names = append(names, node.NID)
		kas = append(kas, startKeepAlive(nc, node, *period, func(err error) {
			fmt.Fprintf(stderr, "%s: %v\n", node.NID, err)
		}))
	}
	fmt.Fprintf(stdout, "keepalive: %d nodes of service %s: %s\n", *n, *service, strings.Join(names, " "))
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	if *d > 0 {
		select {
		case <-stop:
		case <-time.After(*d):
		}
	} else {
		<-stop
	}
	for _, k := range kas {
		k.end()
	}
	return 0
}
