package main

// Connection options common to every command that talks to NATS.

import (
	"flag"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
)

// connFlags are the NATS connection options of a network command. Credentials inside
// the URL (user:password@ or token@) work as nats.go reads them natively.
type connFlags struct {
	url     *string
	creds   *string
	nkey    *string
	tlsCA   *string
	tlsCert *string
	tlsKey  *string
}

func addConnFlags(fs *flag.FlagSet) *connFlags {
	return &connFlags{
		url:     fs.String("url", nats.DefaultURL, "NATS URL (credentials in it are used as nats.go reads them)"),
		creds:   fs.String("creds", "", "NATS credentials file (user JWT and seed)"),
		nkey:    fs.String("nkey", "", "NATS nkey seed file"),
		tlsCA:   fs.String("tlsca", "", "CA certificate (PEM) of the NATS servers"),
		tlsCert: fs.String("tlscert", "", "client certificate (PEM), with -tlskey"),
		tlsKey:  fs.String("tlskey", "", "client private key (PEM), with -tlscert"),
	}
}

// connect opens one NATS connection named name.
func (c *connFlags) connect(name string) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.Timeout(10 * time.Second),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		// Slow consumers are reported, never fatal: watchers and benches keep going.
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			fmt.Fprintf(stderr, "nats error (%s): %v\n", subject, err)
		}),
	}
	if *c.creds != "" {
		opts = append(opts, nats.UserCredentials(*c.creds))
	}
	if *c.nkey != "" {
		o, err := nats.NkeyOptionFromSeed(*c.nkey)
		if err != nil {
			return nil, fmt.Errorf("nkey seed %s: %w", *c.nkey, err)
		}
		opts = append(opts, o)
	}
	if *c.tlsCA != "" {
		opts = append(opts, nats.RootCAs(*c.tlsCA))
	}
	if (*c.tlsCert == "") != (*c.tlsKey == "") {
		return nil, fmt.Errorf("-tlscert and -tlskey go together")
	}
	if *c.tlsCert != "" {
		opts = append(opts, nats.ClientCert(*c.tlsCert, *c.tlsKey))
	}
	nc, err := nats.Connect(*c.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", redactURL(*c.url), err)
	}
	return nc, nil
}

// mustConnect is connect for commands that cannot do anything without NATS.
func (c *connFlags) mustConnect(name string) *nats.Conn {
	nc, err := c.connect(name)
	if err != nil {
		fatalf("%v", err)
	}
	return nc
}

// redactURL hides a password or token in a URL before it is printed.
func redactURL(u string) string {
	at := -1
	for i := len(u) - 1; i >= 0; i-- {
		if u[i] == '@' {
			at = i
			break
		}
	}
	scheme := 0
	for i := 0; i+2 < len(u); i++ {
		if u[i:i+3] == "://" {
			scheme = i + 3
			break
		}
	}
	if at < scheme {
		return u
	}
	return u[:scheme] + "***" + u[at:]
}
