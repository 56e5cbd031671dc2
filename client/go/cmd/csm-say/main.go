// Command csm-say speaks a line of text through a csm-serve server and writes it to a WAV file.
//
//	csm-say -server host:port -o out.wav [flags] "text to speak"
//
// Text comes from the arguments, or from standard input when the only argument is "-".
// Flags may also follow the text (csm-say "Hello." -o hello.wav); after "--" everything is text.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/csm-serve/csm-serve/client/go/csm"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "csm-say:", csm.Describe(err))
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("csm-say", flag.ContinueOnError)
	fs.SetOutput(stderr)
	const usage = `usage: csm-say -server host:port -o out.wav [flags] "text to speak" [flags]   (text "-": read stdin; after "--": text only)`
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	server := fs.String("server", envOr("CSM_SERVER", "localhost:50051"), "server address host:port (env CSM_SERVER)")
	out := fs.String("o", "out.wav", "WAV file to write")
	speaker := fs.Uint("speaker", 0, "speaker id of the generated turn")
	voice := fs.String("voice", "", "name of a voice stored on the server; its segments come before -context")
	var contexts contextFlag
	fs.Var(&contexts, "context", "earlier turn SPEAKER:WAV:TEXT, oldest first, repeatable (WAV: mono file, or empty for text only)")
	temperature := fs.Float64("temperature", 0, "sampling temperature in [0, 5], 0 is greedy (unset: server default)")
	topK := fs.Uint("top-k", 0, "sample among the k most likely codes (unset: server default)")
	seed := fs.Uint64("seed", 0, "seed for reproducible audio (unset: random)")
	maxAudioMs := fs.Uint("max-audio-ms", 0, "upper bound on the audio length in ms (0: server default)")
	sampleRate := fs.Uint("sample-rate", csm.DefaultSampleRate, "output sample rate in Hz, 8000 to 48000")
	requestID := fs.String("request-id", "", "id echoed in the server's logs (empty: the server picks one)")
	timeout := fs.Duration("timeout", 5*time.Minute, "deadline of the whole call")
	useTLS := fs.Bool("tls", false, "connect with TLS, verifying the server against the system roots or -ca")
	caFile := fs.String("ca", "", "PEM file of the CA that signs the server certificate (implies -tls)")
	certFile := fs.String("cert", "", "client certificate PEM for mutual TLS (implies -tls; needs -key)")
	keyFile := fs.String("key", "", "client key PEM for mutual TLS")
	serverName := fs.String("server-name", "", "name to verify in the server certificate (implies -tls)")
	token := fs.String("token", "", "bearer token sent as 'authorization: Bearer <token>' (env CSM_TOKEN)")
	quiet := fs.Bool("q", false, "print nothing on success (errors are always printed)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	words, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if *showVersion {
		fmt.Fprintln(stdout, version())
		return nil
	}
	text, err := readText(words, stdin)
	if err != nil {
		fmt.Fprintf(stderr, "csm-say: %v\n%s\nRun csm-say -h for the flags.\n", err, usage)
		return errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range map[string]uint{"speaker": *speaker, "top-k": *topK, "max-audio-ms": *maxAudioMs, "sample-rate": *sampleRate} {
		if v > math.MaxUint32 {
			fmt.Fprintf(stderr, "csm-say: -%s %d is out of range\n", name, v)
			return errUsage
		}
	}

	req := csm.Request{
		Text:       text,
		Speaker:    uint32(*speaker),
		Voice:      *voice,
		Context:    contexts.segments,
		MaxAudioMs: uint32(*maxAudioMs),
		SampleRate: uint32(*sampleRate),
		RequestID:  *requestID,
	}
	if set["temperature"] {
		t := float32(*temperature)
		req.Temperature = &t
	}
	if set["top-k"] {
		k := uint32(*topK)
		req.TopK = &k
	}
	if set["seed"] {
		req.Seed = seed
	}

	tlsWanted := *useTLS || *caFile != "" || *certFile != "" || *keyFile != "" || *serverName != ""
	client, err := csm.Dial(*server, csm.Options{
		Plaintext:  !tlsWanted,
		CAFile:     *caFile,
		CertFile:   *certFile,
		KeyFile:    *keyFile,
		ServerName: *serverName,
		Token:      firstNonEmpty(*token, os.Getenv("CSM_TOKEN")),
	})
	if err != nil {
		return err
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	res, err := client.SynthesizeWAV(ctx, req.Proto(), *out)
	if err != nil {
		return err
	}
	if !*quiet {
		fmt.Fprintf(stderr, "%s: %.2f s at %d Hz, %d frames, finished by %s, first audio after %.0f ms, request %s\n",
			*out, res.GetAudioMs()/1000, res.GetSampleRate(), res.GetFrames(), res.GetFinishReason(),
			res.GetTimeToFirstAudioMs(), res.GetRequestId())
	}
	return nil
}

func readText(args []string, stdin io.Reader) (string, error) {
	if len(args) == 1 && args[0] == "-" {
		b, err := io.ReadAll(stdin)
		if err != nil {
			return "", fmt.Errorf("read text from stdin: %w", err)
		}
		args = []string{string(b)}
	}
	text := strings.TrimSpace(strings.Join(args, " "))
	if text == "" {
		return "", errors.New("no text to speak")
	}
	return text, nil
}

func envOr(name, fallback string) string {
	return firstNonEmpty(os.Getenv(name), fallback)
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
