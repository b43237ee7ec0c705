// Command gopeer is islb's Go interop peer: it speaks ion's node-discovery protocol with
// Go's own encoding/gob and nats.go, exactly as an unchanged Go ion node does, so that
// what it accepts is what a Go ion node accepts.
//
// Commands: conform, watch, bench-update, bench-get, bench-codec, signal-sim, keepalive,
// decode, encode, vectors, nrpc-vectors. See interop/README.md.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

var (
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

type command struct {
	summary string
	run     func(args []string) int
}

var commands = map[string]command{
	"conform":      {"protocol checks against a running registry", runConform},
	"watch":        {"print node events as JSON lines", runWatch},
	"bench-update": {"keep-alive (update) throughput and latency", runBenchUpdate},
	"bench-get":    {"get of n live nodes: latency to the reply", runBenchGet},
	"bench-codec":  {"Go's gob cost for one Request (fresh encoder/decoder)", runBenchCodec},
	"signal-sim":   {"ion's signal nodes choosing an SFU per client call", runSignalSim},
	"keepalive":    {"keep n nodes of a service alive (save, then update every 2s)", runKeepAlive},
	"decode":       {"gob on stdin to JSON on stdout", runDecode},
	"encode":       {"JSON on stdin to gob on stdout", runEncode},
	"vectors":      {"write the golden gob vectors into DIR", runVectors},
	"nrpc-vectors": {"write the golden nats-grpc frames (hex) into DIR", runNrpcVectors},
}

func usage(w io.Writer) {
	names := make([]string, 0, len(commands))
	for name := range commands {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintln(w, "usage: gopeer COMMAND [flags] [args]  (gopeer COMMAND -h for its flags)")
	for _, name := range names {
		fmt.Fprintf(w, "  %-13s %s\n", name, commands[name].summary)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage(stderr)
		os.Exit(2)
	}
	name := os.Args[1]
	if name == "-h" || name == "-help" || name == "--help" || name == "help" {
		usage(stdout)
		return
	}
	cmd, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "gopeer: unknown command %q\n", name)
		usage(stderr)
		os.Exit(2)
	}
	os.Exit(cmd.run(os.Args[2:]))
}

// newFlags is the flag set of one command; a bad flag exits with status 2.
func newFlags(name, args string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, strings.TrimSpace(fmt.Sprintf("usage: gopeer %s [flags] %s", name, args)))
		fs.PrintDefaults()
	}
	return fs
}

// fatalf reports an error that ends the command.
func fatalf(format string, args ...interface{}) {
	fmt.Fprintf(stderr, "gopeer: "+format+"\n", args...)
	os.Exit(1)
}
