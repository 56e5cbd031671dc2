package livetest

import (
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func TestWaitServingWaitsForWarmUp(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	h := health.NewServer()
	h.SetServingStatus(speechService, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, h)
	go srv.Serve(lis)
	defer srv.Stop()

	const warmUp = 600 * time.Millisecond
	time.AfterFunc(warmUp, func() { h.SetServingStatus(speechService, healthpb.HealthCheckResponse_SERVING) })
	start := time.Now()
	if err := waitServing(lis.Addr().String()); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < warmUp {
		t.Fatalf("returned after %s, before the server turned SERVING at %s", waited, warmUp)
	}
}
