package spec

// FieldError is a manifest error about one field. Field is the field's path
// in JSON form ("sandbox.writable_paths[1]", "limits.memory", `env["A B"]`),
// or an annotation key such as io.pyisolate.memory, or empty when the error
// concerns the whole document. Callers test for it with errors.As.
type FieldError struct {
	// Field is the path of the offending field; empty for the document.
	Field string
	// Msg says what is wrong with it.
	Msg string
}

// Error returns "manifest: FIELD: MSG", or "manifest: MSG" without a field.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return "manifest: " + e.Msg
	}
	return "manifest: " + e.Field + ": " + e.Msg
}
