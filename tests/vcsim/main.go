// vcsim: govmomi's vSphere simulator as a command, for pyvirtd's ESX tests.
//
// Debian ships govmomi's simulator package but no vcsim command; this main
// wraps it.  It serves the vSphere API over TLS on -listen with the
// certificate in -cert/-key, accepts only -username/-password, prints
// "VCSIM URL <url>" once it listens, and stops when its standard input
// closes (so a test that dies never leaves it behind) or on SIGTERM.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	model := flag.String("model", "esx", "esx (a standalone host) or vpx (a vCenter)")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	username := flag.String("username", "", "the only user name accepted")
	password := flag.String("password", "", "its password")
	certFile := flag.String("cert", "", "PEM certificate for TLS")
	keyFile := flag.String("key", "", "PEM key of the certificate")
	flag.Parse()
	if *username == "" || *password == "" || *certFile == "" || *keyFile == "" {
		log.Fatal("-username, -password, -cert and -key are required")
	}

	var m *simulator.Model
	switch *model {
	case "esx":
		m = simulator.ESX()
	case "vpx":
		m = simulator.VPX()
	default:
		log.Fatalf("unknown model %q", *model)
	}
	if err := m.Create(); err != nil {
		log.Fatal(err)
	}
	defer m.Remove()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatal(err)
	}
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, *password)}
	s := m.Service.NewServer()
	defer s.Close()

	u := *s.URL
	u.User = nil
	fmt.Printf("VCSIM URL %s\n", u.String())
	os.Stdout.Sync()

	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
}
