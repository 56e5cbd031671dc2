// Package livetest finds the live csm-serve server that integration tests talk to.
package livetest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// ReadyTimeout bounds the wait for the server's health to turn SERVING (it binds its port
// before the engine has warmed up, and answers UNAVAILABLE until then).
const ReadyTimeout = 3 * time.Minute

const speechService = "csm.v1.Speech"

var (
	mu    sync.Mutex
	ready = map[string]error{} // address -> outcome of the wait, so a test binary waits once
)

// Addr returns $CSM_SERVER, the host:port of a plaintext csm-serve server (for example
// `csm-serve --model tiny --port 50051`), once its health check for csm.v1.Speech says
// SERVING. When CSM_SERVER is unset the test is skipped, except under CI=true, where a
// missing server is a failure.
func Addr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv("CSM_SERVER")
	if addr == "" {
		const how = "CSM_SERVER is unset: start `csm-serve --model tiny --port 50051` and set CSM_SERVER=127.0.0.1:50051 to run this integration test"
		if os.Getenv("CI") == "true" {
			t.Fatal(how + " (CI=true, so .ci/run must provide the server)")
		}
		t.Skip(how)
	}
	mu.Lock()
	err, done := ready[addr]
	if !done {
		err = waitServing(addr)
		ready[addr] = err
	}
	mu.Unlock()
	if err != nil {
		t.Fatalf("CSM_SERVER=%s: %v", addr, err)
	}
	return addr
}

// waitServing polls the standard gRPC health service until csm.v1.Speech is SERVING. A
// server without the health service counts as ready.
func waitServing(addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(ReadyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: speechService})
		cancel()
		switch {
		case err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING:
			return nil
		case status.Code(err) == codes.Unimplemented:
			return nil
		case time.Now().After(deadline):
			last := "health " + resp.GetStatus().String()
			if err != nil {
				last = err.Error()
			}
			return fmt.Errorf("%s not SERVING after %s (last: %s)", speechService, ReadyTimeout, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
