package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func init() {
	register("spec", "print the OCI config.json generated for an extension bundle", specMain)
}

func specMain(args []string) int {
	fs := newFlagSet("spec", "[--bundle DIR] [--group G] [--id ID] [--root DIR] [--restriction MODEL]\n\n"+
		"Prints the OCI config.json that 'run' would use for the extension bundle DIR.")
	bundle := fs.String("bundle", ".", "extension bundle directory")
	group := fs.String("group", "", groupFlagHelp)
	id := fs.String("id", "", idFlagHelp+" (default: the extension name)")
	root := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	restriction := fs.String("restriction", "", "build for this restriction model instead of the detected one (none, apparmor, sysctl, selinux, no-caps)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "spec: unexpected argument %q", fs.Arg(0))
	}
	if code := checkIDFlags("spec", *id, *group); code >= 0 {
		return code
	}
	if *restriction != "" && !slices.Contains(spec.Restrictions, spec.Restriction(*restriction)) {
		return fail(exitUsage, "spec: --restriction: unknown model %q", *restriction)
	}
	ctx := context.Background()
	cid := *id
	if cid == "" {
		if ld, err := sandbox.Load(*bundle); err == nil && ld.Manifest != nil {
			cid = ld.Manifest.Name
		}
	}
	s, _, err := sandbox.Preview(ctx, *bundle, cid, *group, *root, filepath.Join(*root, "rootfs", cid), spec.Restriction(*restriction))
	if err != nil {
		if sandbox.IsUserError(err) {
			return fail(exitUsage, "spec: %v", err)
		}
		return fail(1, "spec: %v", err)
	}
	if d := spec.DefaultsList(s); len(d) > 0 {
		fmt.Fprintf(os.Stderr, "pyisolate: note: defaults for the limits the manifest leaves out: %s (annotation %s)\n",
			strings.Join(d, ", "), spec.AnnotationDefaults)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fail(1, "spec: %v", err)
	}
	return 0
}
