package detect

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestDetectCached(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	p1, err := Cached(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(root, ProfileCacheFile)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no cache written: %v", err)
	}
	var c cachedProfile
	if err := json.Unmarshal(b, &c); err != nil || c.Key == "" || c.Profile.Restriction != p1.Restriction {
		t.Fatalf("cache = %s (%v)", b, err)
	}
	// A hit returns the recorded restriction model, with paths read afresh.
	c.Profile.RestrictionReason = "from the cache"
	c.Profile.Paths = []string{"/nonexistent"}
	b, _ = json.Marshal(c)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p2, err := Cached(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if p2.RestrictionReason != "from the cache" {
		t.Errorf("cache not used: reason %q", p2.RestrictionReason)
	}
	if len(p2.Paths) == 0 || p2.Paths[0] == "/nonexistent" {
		t.Errorf("paths not refreshed: %v", p2.Paths)
	}
	// A key that no longer matches (another boot, sysctl or binary) detects again.
	c.Key = "stale"
	b, _ = json.Marshal(c)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p3, err := Cached(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if p3.RestrictionReason == "from the cache" {
		t.Error("stale cache used")
	}
}
