package ids

import (
	"os"
	"strings"
	"testing"
)

// docs/IDS.md holds the generator script verbatim, for other languages.
func TestDocHoldsScriptVerbatim(t *testing.T) {
	doc, err := os.ReadFile("../docs/IDS.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```lua\n"+Script+"```\n") {
		t.Fatal("docs/IDS.md does not hold ids.Script verbatim in a ```lua block: copy it from ids/generator.go")
	}
}
