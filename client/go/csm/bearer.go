package csm

import "context"

// bearerToken sends "authorization: Bearer <token>" with every call.
type bearerToken struct {
	token      string
	requireTLS bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity keeps the token off plaintext connections unless the caller
// chose plaintext explicitly (Options.Plaintext).
func (b bearerToken) RequireTransportSecurity() bool { return b.requireTLS }
