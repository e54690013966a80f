package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	aggdv1 "github.com/aggd/aggd/api/gen/aggd/v1"
)

type pki struct {
	dir    string
	caPEM  []byte
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{dir: t.TempDir(), caCert: cert, caKey: key, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	os.WriteFile(filepath.Join(p.dir, "ca.pem"), p.caPEM, 0o600)
	return p
}

// issue writes a certificate and key signed by the CA; it returns their
// paths and the TLS certificate.
func (p *pki) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (string, string, tls.Certificate) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM, keyPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	cp, kp := filepath.Join(p.dir, name+".pem"), filepath.Join(p.dir, name+"-key.pem")
	os.WriteFile(cp, certPEM, 0o600)
	os.WriteFile(kp, keyPEM, 0o600)
	pair, _ := tls.X509KeyPair(certPEM, keyPEM)
	return cp, kp, pair
}

func submitVia(t *testing.T, addr string, creds credentials.TransportCredentials) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = aggdv1.NewAggregatorServiceClient(conn).Submit(ctx, &aggdv1.SubmitRequest{})
	return err
}

func TestTLSAndMutualTLS(t *testing.T) {
	p := newPKI(t)
	cert, key, _ := p.issue(t, "server", x509.ExtKeyUsageServerAuth)
	_, _, clientPair := p.issue(t, "client", x509.ExtKeyUsageClientAuth)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(p.caPEM)

	in := startAggd(t, "--tls-cert", cert, "--tls-key", key)
	if err := submitVia(t, in.addr, credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})); err != nil {
		t.Fatalf("TLS: %v", err)
	}
	if err := submitVia(t, in.addr, insecure.NewCredentials()); err == nil {
		t.Fatal("plaintext reached a TLS port")
	}

	m := startAggd(t, "--tls-cert", cert, "--tls-key", key, "--tls-client-ca", filepath.Join(p.dir, "ca.pem"))
	if err := submitVia(t, m.addr, credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost"})); err == nil {
		t.Fatal("a client without a certificate passed mTLS")
	}
	if err := submitVia(t, m.addr, credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{clientPair}})); err != nil {
		t.Fatalf("mTLS with a client certificate: %v", err)
	}
}

func TestMemoryLimitRefusesWhenOverBudget(t *testing.T) {
	// A budget far below what any Go process holds: the hard limit at once.
	in := startAggd(t, "--memory-limit", "1048576")
	err := submitVia(t, in.addr, insecure.NewCredentials())
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("got %v, want ResourceExhausted", err)
	}
	if v := metric(scrape(t, in.admin), "aggd_memory_pressure"); v != 2 {
		t.Fatalf("aggd_memory_pressure %v", v)
	}
}
