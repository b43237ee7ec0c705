package main

// watch: every message on node.discovery.<service>.> as one JSON line, as a Go watcher
// decodes it.

import (
	"bufio"
	"encoding/json"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/nats-io/nats.go"
)

// watchLine is a decoded event: Go's JSON of the Request, with the subject first.
type watchLine struct {
	Subject string
	Request
}

// watchError is a message that is not a gob Request (a Go watcher would stop on it).
type watchError struct {
	Subject string `json:"subject"`
	Error   string `json:"error"`
}

func runWatch(args []string) int {
	fs := newFlags("watch", "")
	conn := addConnFlags(fs)
	service := fs.String("service", "*", `service to watch ("*" for every service)`)
	fs.Parse(args)
	nc := conn.mustConnect("gopeer watch")
	defer nc.Close()

	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	print := func(subject string, v interface{}) {
		b, err := json.Marshal(v)
		if err != nil {
			b, _ = json.Marshal(watchError{Subject: subject, Error: "json: " + err.Error()})
		}
		mu.Lock()
		out.Write(append(b, '\n'))
		out.Flush()
		mu.Unlock()
	}
	sub, err := nc.Subscribe(watchSubject(*service), func(m *nats.Msg) {
		var r Request
		if err := decodeGob(m.Data, &r); err != nil {
			print(m.Subject, watchError{Subject: m.Subject, Error: err.Error()})
			return
		}
		print(m.Subject, watchLine{Subject: m.Subject, Request: r})
	})
	if err != nil {
		fatalf("subscribing: %v", err)
	}
	sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		fatalf("subscribing: %v", err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
	return 0
}
