package csm

import (
	"context"

	"google.golang.org/grpc"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// Voices returns the generated stub of csm.v1.Voices, for calls this package does not wrap.
func (c *Client) Voices() csmv1.VoicesClient { return c.voices }

// CreateVoice stores a voice made of segments (each with its transcript and audio, see
// SegmentFromWAV); the server encodes their audio once. Use it by name with Request.Voice
// or ConversationConfig.Voice. A taken name answers codes.AlreadyExists: compare
// GetVoice's ContentHash to tell a retried create from another voice.
func (c *Client) CreateVoice(ctx context.Context, name string, segments []*csmv1.Segment, description string,
	opts ...grpc.CallOption) (*csmv1.Voice, error) {
	return c.voices.CreateVoice(ctx, &csmv1.CreateVoiceRequest{Name: name, Segments: segments, Description: description}, opts...)
}

// GetVoice returns one stored voice; codes.NotFound when there is none.
func (c *Client) GetVoice(ctx context.Context, name string, opts ...grpc.CallOption) (*csmv1.Voice, error) {
	return c.voices.GetVoice(ctx, &csmv1.GetVoiceRequest{Name: name}, opts...)
}

// ListVoices returns every stored voice in name order, reading all pages.
func (c *Client) ListVoices(ctx context.Context, opts ...grpc.CallOption) ([]*csmv1.Voice, error) {
	var voices []*csmv1.Voice
	token := ""
	for {
		page, err := c.voices.ListVoices(ctx, &csmv1.ListVoicesRequest{PageToken: token}, opts...)
		if err != nil {
			return nil, err
		}
		voices = append(voices, page.GetVoices()...)
		if token = page.GetNextPageToken(); token == "" {
			return voices, nil
		}
	}
}

// DeleteVoice deletes a stored voice and reports whether there was one. Without allowMissing
// an unknown name answers codes.NotFound. Streams already using the voice are not disturbed.
func (c *Client) DeleteVoice(ctx context.Context, name string, allowMissing bool, opts ...grpc.CallOption) (bool, error) {
	res, err := c.voices.DeleteVoice(ctx, &csmv1.DeleteVoiceRequest{Name: name, AllowMissing: allowMissing}, opts...)
	if err != nil {
		return false, err
	}
	return res.GetDeleted(), nil
}
