// A Go program on the csm module in client/go: one conversation (csm.v1 Converse) whose
// replies are written as WAV files, one per turn. Built from the checkout (go.mod's replace):
//
//	cd examples/go && go run . -server localhost:50051 -out replies
//
// Token: $CSM_TOKEN (optional).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/csm-serve/csm-serve/client/go/csm"
	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

func main() {
	server := flag.String("server", "localhost:50051", "host:port of the csm-serve")
	out := flag.String("out", "replies", "folder for the replies (<turn id>.wav)")
	maxAudioMs := flag.Uint("max-audio-ms", 1000, "upper bound on each reply's audio")
	flag.Parse()

	client, err := csm.Dial(*server, csm.Options{Plaintext: true, Token: os.Getenv("CSM_TOKEN")})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	seed := uint64(7)
	conv, err := client.Converse(ctx, &csmv1.ConversationConfig{
		MaxAudioMs: uint32(*maxAudioMs),
		Sampling:   &csmv1.Sampling{Seed: &seed},
		Output:     &csmv1.OutputFormat{Encoding: csmv1.AudioEncoding_AUDIO_ENCODING_PCM_S16LE},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer conv.Close()

	go func() { // send every turn; the replies are read below as they come
		conv.AddContext("", &csmv1.Segment{Speaker: 1, Text: "Where is the station?"})
		conv.Speak(&csmv1.SpeakTurn{Text: "Turn left at the second light."})
		conv.Speak(&csmv1.SpeakTurn{MoreText: true}) // its text streams in, as from an LLM
		for _, piece := range []string{"Anything ", "else? ", "I am happy ", "to help."} {
			conv.SendText(piece, false, false)
		}
		conv.SendText("", false, true)
		conv.CloseSend()
	}()

	audio := map[string][]byte{}
	for {
		msg, err := conv.Recv()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			log.Fatal(csm.Describe(err))
		}
		switch kind := msg.Kind.(type) {
		case *csmv1.ConverseResponse_Audio:
			audio[msg.TurnId] = append(audio[msg.TurnId], kind.Audio.Data...)
		case *csmv1.ConverseResponse_Result:
			samples := audio[msg.TurnId]
			delete(audio, msg.TurnId)
			path := filepath.Join(*out, msg.TurnId+".wav")
			file := append(csm.WAVHeader(24000, uint32(len(samples))), samples...)
			if err := os.WriteFile(path, file, 0o644); err != nil {
				log.Fatal(err)
			}
			fmt.Printf("%s: %.2f s of audio\n", path, float64(kind.Result.AudioMs)/1000)
		case *csmv1.ConverseResponse_Error:
			fmt.Fprintf(os.Stderr, "%s failed: %v\n", msg.TurnId, csm.TurnError(msg))
		}
	}
}
