package spec

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// sizeUnit is a unit of ByteSize.
type sizeUnit struct {
	suffix string
	factor int64
}

// byteUnits are the units of a size, largest first within each family.
var byteUnits = []sizeUnit{
	{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"k", 1e3},
}

// ParseByteSize parses a size: digits, optionally followed by a binary unit
// (Ki, Mi, Gi, Ti: powers of 1024) or a decimal one (k or K, M, G, T: powers
// of 1000). There is no fraction, sign, space or "B" suffix. A size that does
// not fit int64 is an error.
func ParseByteSize(s string) (ByteSize, error) {
	digits := strings.TrimLeft(s, "0123456789")
	num, unit := s[:len(s)-len(digits)], digits
	if num == "" {
		if strings.HasPrefix(s, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want digits and an optional unit, such as 512Mi", s)
	}
	factor := int64(1)
	if unit != "" {
		i := slices.IndexFunc(byteUnits, func(u sizeUnit) bool { return u.suffix == unit })
		if i < 0 {
			return 0, fmt.Errorf("invalid size %q: unknown unit %q (want Ki, Mi, Gi, Ti, k, K, M, G or T)", s, unit)
		}
		factor = byteUnits[i].factor
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/factor {
		return 0, fmt.Errorf("invalid size %q: too large (at most %d bytes)", s, int64(math.MaxInt64))
	}
	return ByteSize(n * factor), nil
}

// parseSizeNumber parses the JSON number form of a size: digits only.
func parseSizeNumber(s string) (ByteSize, error) {
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("invalid size %s: must not be negative", s)
	}
	if strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("invalid size %s: must be a whole number of bytes", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %s: too large (at most %d bytes)", s, int64(math.MaxInt64))
	}
	return ByteSize(n), nil
}

// UnmarshalJSON reads a size from a non-negative JSON integer or a string
// accepted by ParseByteSize. null leaves the size unchanged.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	var (
		v   ByteSize
		err error
	)
	switch {
	case string(data) == "null":
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err = ParseByteSize(s)
	default:
		v, err = parseSizeNumber(string(data))
	}
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalJSON writes the size as a JSON integer of bytes.
func (b ByteSize) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, int64(b), 10), nil
}

// String writes the size exactly, with the unit that gives the smallest
// number ("512Mi", "2G", "1000Ki", "1234"), in a form ParseByteSize reads.
func (b ByteSize) String() string {
	n, suffix := int64(b), ""
	if b <= 0 {
		return strconv.FormatInt(n, 10)
	}
	for _, u := range byteUnits {
		if u.suffix == "K" {
			continue // "k" is the usual spelling
		}
		if int64(b)%u.factor == 0 && int64(b)/u.factor < n {
			n, suffix = int64(b)/u.factor, u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + suffix
}
