// Package csm is a client for csm-serve, the gRPC server of Sesame's CSM-1B speech model.
//
// It wraps the generated csm.v1 stubs (package csmv1) with what most callers need:
// dialling with TLS or plaintext and a bearer token, streaming one utterance to a callback
// or a channel while checking the stream's contract, writing the audio to a WAV file, and
// building context segments from WAV files.
//
//	c, err := csm.Dial("speech.example.com:443", csm.Options{Token: os.Getenv("CSM_TOKEN")})
//	if err != nil { ... }
//	defer c.Close()
//	req := csm.Request{Text: "Hello from Go.", Speaker: 0}
//	res, err := c.SynthesizeWAV(ctx, req.Proto(), "hello.wav")
package csm
