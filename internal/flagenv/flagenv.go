// Package flagenv fills flags not given on the command line from
// environment variables, as flanneld does with FLANNELD_*: flag > variable
// > default, an empty variable counting as unset (as upstream).
package flagenv

import (
	"errors"
	"flag"
	"fmt"
	"strings"
)

// Name is the variable for flag name: prefix, then the name in upper case
// with '-' as '_' (FLANNELD_ETCD_ENDPOINTS for etcd-endpoints).
func Name(prefix, flag string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// Set sets each flag of the parsed fs that the command line did not set,
// and for which use reports true (every flag when use is nil), from its
// variable as getenv reports it. It tries every flag, and its error names
// each variable whose value the flag rejected.
func Set(fs *flag.FlagSet, prefix string, getenv func(string) string, use func(flag string) bool) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || (use != nil && !use(f.Name)) {
			return
		}
		name := Name(prefix, f.Name)
		if v := getenv(name); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}
