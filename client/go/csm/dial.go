package csm

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// Options say how to reach a csm-serve server. The zero value dials with TLS, verifying the
// server against the system roots, and sends no token.
type Options struct {
	// Plaintext dials without TLS. Use it on loopback or a network you trust: a token sent
	// this way can be read by anyone on the path.
	Plaintext bool
	// CAFile is a PEM file of the roots that sign the server's certificate. Empty: the
	// system roots.
	CAFile string
	// CertFile and KeyFile are the client's PEM certificate and key, for servers that
	// require mutual TLS. Give both or neither.
	CertFile string
	KeyFile  string
	// ServerName overrides the host name checked against the server's certificate.
	ServerName string
	// Token is sent as "authorization: Bearer <Token>" with every call. Empty: no header.
	Token string
	// DialOptions are passed to grpc.NewClient after the ones built from the fields above.
	DialOptions []grpc.DialOption
}

// Client talks to one csm-serve server. It is safe for concurrent use; calls share one
// connection.
type Client struct {
	conn   *grpc.ClientConn
	speech csmv1.SpeechClient
	voices csmv1.VoicesClient
}

// Dial creates a client for target ("host:port" or any gRPC target). It does not wait for
// the connection: the first call connects, and reports an unreachable server.
func Dial(target string, opts Options) (*Client, error) {
	transport, err := transportCredentials(opts)
	if err != nil {
		return nil, err
	}
	dialOpts := []grpc.DialOption{grpc.WithTransportCredentials(transport)}
	if opts.Token != "" {
		dialOpts = append(dialOpts, grpc.WithPerRPCCredentials(bearerToken{
			token:      opts.Token,
			requireTLS: !opts.Plaintext,
		}))
	}
	dialOpts = append(dialOpts, opts.DialOptions...)
	conn, err := grpc.NewClient(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("csm: dial %s: %w", target, err)
	}
	return &Client{conn: conn, speech: csmv1.NewSpeechClient(conn), voices: csmv1.NewVoicesClient(conn)}, nil
}

// Speech returns the generated stub, for calls this package does not wrap.
func (c *Client) Speech() csmv1.SpeechClient { return c.speech }

// Close closes the connection. Calls in flight fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// ModelInfo describes the server's model, limits and current load.
func (c *Client) ModelInfo(ctx context.Context, opts ...grpc.CallOption) (*csmv1.ModelInfo, error) {
	return c.speech.GetModelInfo(ctx, &csmv1.GetModelInfoRequest{}, opts...)
}

func transportCredentials(opts Options) (credentials.TransportCredentials, error) {
	if opts.Plaintext {
		if opts.CAFile != "" || opts.CertFile != "" || opts.KeyFile != "" || opts.ServerName != "" {
			return nil, errors.New("csm: Plaintext is set together with TLS settings (CAFile, CertFile, KeyFile or ServerName); drop one or the other")
		}
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: opts.ServerName}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("csm: read CA file: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("csm: CA file %s holds no PEM certificate", opts.CAFile)
		}
		cfg.RootCAs = roots
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("csm: mutual TLS needs both CertFile and KeyFile")
	}
	if opts.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(opts.CertFile, opts.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("csm: load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(cfg), nil
}
