package csm

import (
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Describe renders an error from a csm.v1 call as one line a person can act on: the status
// code and message, then the field violations (google.rpc.BadRequest) and the advised retry
// delay (google.rpc.RetryInfo) the server attached. Other errors are returned as they are.
func Describe(err error) string {
	if err == nil {
		return ""
	}
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				fmt.Fprintf(&b, "; %s: %s", v.GetField(), v.GetDescription())
			}
		case *errdetails.RetryInfo:
			fmt.Fprintf(&b, "; retry after %s", d.GetRetryDelay().AsDuration())
		}
	}
	return b.String()
}
