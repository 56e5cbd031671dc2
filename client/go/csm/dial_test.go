package csm

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
	"google.golang.org/grpc/credentials"
)

// testPKI is a throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
type testPKI struct {
	caPool                *x509.CertPool
	serverCert            tls.Certificate
	caFile                string
	clientCert, clientKey string
}

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, caDER := issue(t, &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}, nil, nil)
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, srvDER := issue(t, &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "csm-serve"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, ca, caKey)
	cliKey, cliDER := issue(t, &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "go client"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, ca, caKey)
	p := testPKI{caPool: x509.NewCertPool()}
	p.caPool.AddCert(ca)
	p.serverCert = tls.Certificate{Certificate: [][]byte{srvDER}, PrivateKey: srvKey}
	p.caFile = writePEM(t, dir, "ca.pem", "CERTIFICATE", caDER)
	p.clientCert = writePEM(t, dir, "client.pem", "CERTIFICATE", cliDER)
	keyDER, err := x509.MarshalECPrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	p.clientKey = writePEM(t, dir, "client.key", "EC PRIVATE KEY", keyDER)
	return p
}

// issue signs tmpl with parent's key (self-signed when parent is nil).
func issue(t *testing.T, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, der
}

func writePEM(t *testing.T, dir, name, kind string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestMutualTLSWithToken(t *testing.T) {
	pki := newTestPKI(t)
	srv := &scriptedSpeech{}
	addr := serve(t, srv, grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{pki.serverCert},
		ClientCAs:    pki.caPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})))

	c, err := Dial(addr, Options{CAFile: pki.caFile, CertFile: pki.clientCert, KeyFile: pki.clientKey, Token: "t0k"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, err := c.ModelInfo(context.Background())
	if err != nil {
		t.Fatal(Describe(err))
	}
	if info.GetPreset() != "scripted" || len(srv.seenAuth()) != 1 || srv.seenAuth()[0] != "Bearer t0k" {
		t.Fatalf("info %v, authorization %q", info, srv.seenAuth())
	}

	noCert, err := Dial(addr, Options{CAFile: pki.caFile})
	if err != nil {
		t.Fatal(err)
	}
	defer noCert.Close()
	if _, err := noCert.ModelInfo(context.Background()); err == nil {
		t.Fatal("a server requiring client certificates accepted a client without one")
	}
}

func TestDialRejectsContradictoryOptions(t *testing.T) {
	for name, opts := range map[string]Options{
		"plaintext with CA": {Plaintext: true, CAFile: "ca.pem"},
		"cert without key":  {CertFile: "client.pem"},
		"missing CA file":   {CAFile: filepath.Join(t.TempDir(), "absent.pem")},
		"CA file not PEM":   {CAFile: "dial_test.go"},
	} {
		if c, err := Dial("127.0.0.1:1", opts); err == nil {
			c.Close()
			t.Errorf("%s: Dial accepted %+v", name, opts)
		}
	}
}
