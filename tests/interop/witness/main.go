// Command witness is an independent test peer for C2SP transparency log
// witnessing: an add-checkpoint server per c2sp.org/tlog-witness v1.0.0 that
// answers with Ed25519 cosignatures per c2sp.org/tlog-cosignature (v1, key
// type 0x04), and a checker of cosigned checkpoints. Log signatures are
// checked with golang.org/x/mod/sumdb/note, consistency proofs with
// sumdb/tlog; cosignatures are made and checked here with crypto/ed25519.
//
//	witness keygen NAME
//	    Prints a new private key, PRIVATE+COSIGNATURE+NAME+base64(seed),
//	    and its verifier key, NAME+<hex key ID>+base64(0x04 || public key),
//	    where key ID = SHA-256(NAME || 0x0A || 0x04 || public key)[:4].
//	witness serve LISTEN PRIVATE_KEY_FILE STATE_FILE LOG_VKEY...
//	    Serves POST /add-checkpoint on LISTEN (e.g. 127.0.0.1:0) and prints
//	    "listening on HOST:PORT" first. Each LOG_VKEY is a note verifier key
//	    (or a file holding one) whose name is the origin it is trusted for.
//	    The latest cosigned checkpoint per origin is kept in STATE_FILE (JSON).
//	witness verify WITNESS_VKEY LOG_VKEY NOTE_FILE
//	    Checks that the checkpoint note in NOTE_FILE is signed by LOG_VKEY and
//	    cosigned by WITNESS_VKEY (keys or files holding them), and prints
//	    "OK <origin> <size> cosigned at <unix seconds>".
//	witness cosign PRIVATE_KEY_FILE NOTE_FILE
//	    Prints a cosignature line, timed now, for the checkpoint in NOTE_FILE.
//
// A key file may hold several lines (e.g. the output of keygen): a private key
// is its first PRIVATE+COSIGNATURE+ line, a verifier key its first other line.
// It exits with status 1 and the reason on standard error when a check fails.
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const (
	cosigType   = 0x04 // signed-note signature type of cosignature/v1
	privPrefix  = "PRIVATE+COSIGNATURE+"
	maxFuture   = 10 * 60 // seconds a cosignature may be ahead of our clock
	maxRequest  = 1 << 20
	maxProofLen = 63
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "keygen":
		return keygen(args[1])
	case len(args) >= 5 && args[0] == "serve":
		return serve(args[1], args[2], args[3], args[4:])
	case len(args) == 4 && args[0] == "verify":
		return verify(args[1], args[2], args[3])
	case len(args) == 3 && args[0] == "cosign":
		return cosign(args[1], args[2])
	}
	return errors.New("usage: witness keygen NAME | serve LISTEN PRIVATE_KEY_FILE STATE_FILE LOG_VKEY... |" +
		" verify WITNESS_VKEY LOG_VKEY NOTE_FILE | cosign PRIVATE_KEY_FILE NOTE_FILE")
}

// A cosigner is a cosignature/v1 key; priv is nil when only verifying.
type cosigner struct {
	name string
	id   uint32
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

// keyID is SHA-256(name || 0x0A || 0x04 || public key)[:4] as a big-endian uint32.
func keyID(name string, pub []byte) uint32 {
	sum := sha256.Sum256(append([]byte(name+"\n\x04"), pub...))
	return binary.BigEndian.Uint32(sum[:])
}

func validName(s string) bool {
	return s != "" && utf8.ValidString(s) && !strings.Contains(s, "+") && strings.IndexFunc(s, unicode.IsSpace) < 0
}

func parsePrivate(s string) (*cosigner, error) {
	f := strings.SplitN(s, "+", 4)
	if len(f) != 4 || f[0]+"+"+f[1]+"+" != privPrefix || !validName(f[2]) {
		return nil, errors.New("malformed private key")
	}
	seed, err := base64.StdEncoding.DecodeString(f[3])
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("malformed private key seed")
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	return &cosigner{f[2], keyID(f[2], pub), pub, priv}, nil
}

func parseVkey(s string) (*cosigner, error) {
	f := strings.SplitN(s, "+", 3)
	if len(f) != 3 || !validName(f[0]) || len(f[1]) != 8 {
		return nil, fmt.Errorf("malformed verifier key %q", s)
	}
	id, err1 := strconv.ParseUint(f[1], 16, 32)
	key, err2 := base64.StdEncoding.DecodeString(f[2])
	if err1 != nil || err2 != nil || len(key) != 1+ed25519.PublicKeySize || key[0] != cosigType {
		return nil, fmt.Errorf("verifier key %q is not a cosignature/v1 (type 0x04) Ed25519 key", s)
	}
	if keyID(f[0], key[1:]) != uint32(id) {
		return nil, fmt.Errorf("verifier key %q: key ID does not match name and key", s)
	}
	return &cosigner{name: f[0], id: uint32(id), pub: key[1:]}, nil
}

// message is the signed message of tlog-cosignature "Ed25519 signed message".
func message(ts uint64, text string) []byte {
	return []byte(fmt.Sprintf("cosignature/v1\ntime %d\n%s", ts, text))
}

// cosign returns the note signature line for the note text at time ts.
func (c *cosigner) cosign(text string, ts uint64) string {
	b := make([]byte, 12, 12+ed25519.SignatureSize)
	binary.BigEndian.PutUint32(b, c.id)
	binary.BigEndian.PutUint64(b[4:], ts)
	b = append(b, ed25519.Sign(c.priv, message(ts, text))...)
	return "— " + c.name + " " + base64.StdEncoding.EncodeToString(b) + "\n"
}

// check verifies the base64 value of a signature line and returns its time.
func (c *cosigner) check(b64, text string) (uint64, error) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != 4+8+ed25519.SignatureSize {
		return 0, fmt.Errorf("cosignature is not base64 of 76 bytes")
	}
	if binary.BigEndian.Uint32(b) != c.id {
		return 0, fmt.Errorf("cosignature key ID %08x, want %08x", binary.BigEndian.Uint32(b), c.id)
	}
	ts := binary.BigEndian.Uint64(b[4:])
	if ts > math.MaxInt64 {
		return 0, fmt.Errorf("cosignature timestamp %d exceeds 2^63-1", ts)
	}
	if !ed25519.Verify(c.pub, message(ts, text), b[12:]) {
		return 0, fmt.Errorf("cosignature does not verify")
	}
	return ts, nil
}

type checkpoint struct {
	origin string
	size   int64
	hash   tlog.Hash
}

func parseCheckpoint(text string) (checkpoint, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if !strings.HasSuffix(text, "\n") || len(lines) < 3 || strings.Contains(text, "\n\n") || text[0] == '\n' {
		return checkpoint{}, errors.New("checkpoint: text is not three or more non-empty lines")
	}
	size, err := parseDecimal(lines[1])
	if err != nil {
		return checkpoint{}, fmt.Errorf("checkpoint: tree size: %v", err)
	}
	hash, err := parseHash(lines[2])
	return checkpoint{lines[0], size, hash}, err
}

// parseDecimal accepts only ASCII digits without leading zeroes.
func parseDecimal(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || strings.Trim(s, "0123456789") != "" || len(s) > 1 && s[0] == '0' {
		return 0, fmt.Errorf("bad decimal %q", s)
	}
	return n, nil
}

// parseHash accepts only the canonical padded base64 of 32 bytes.
func parseHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(h) || base64.StdEncoding.EncodeToString(b) != s {
		return h, fmt.Errorf("bad base64 hash %q", s)
	}
	copy(h[:], b)
	return h, nil
}

// noteText returns the text of a signed note (up to its last blank line), or
// the whole data if it has no blank line.
func noteText(data string) string {
	if i := strings.LastIndex(data, "\n\n"); i >= 0 {
		return data[:i+1]
	}
	return data
}

// keyArg returns the key named by arg: the first fitting line of the file arg
// (a private key line or another one), or else arg itself.
func keyArg(arg string, private bool) string {
	data, err := os.ReadFile(arg)
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); err == nil && l != "" && strings.HasPrefix(l, privPrefix) == private {
			return l
		}
	}
	return arg
}

func keygen(name string) error {
	if !validName(name) {
		return fmt.Errorf("invalid key name %q", name)
	}
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return err
	}
	skey := privPrefix + name + "+" + base64.StdEncoding.EncodeToString(seed)
	c, err := parsePrivate(skey)
	if err != nil {
		return err
	}
	vkey := base64.StdEncoding.EncodeToString(append([]byte{cosigType}, c.pub...))
	fmt.Printf("%s\n%s+%08x+%s\n", skey, name, c.id, vkey)
	return nil
}

func cosign(keyFile, noteFile string) error {
	c, err := parsePrivate(keyArg(keyFile, true))
	if err != nil {
		return fmt.Errorf("%s: %v", keyFile, err)
	}
	data, err := os.ReadFile(noteFile)
	if err != nil {
		return err
	}
	text := noteText(string(data))
	if _, err := parseCheckpoint(text); err != nil {
		return err
	}
	fmt.Print(c.cosign(text, uint64(time.Now().Unix())))
	return nil
}

func verify(witnessKey, logKey, noteFile string) error {
	w, err := parseVkey(keyArg(witnessKey, false))
	if err != nil {
		return fmt.Errorf("witness key: %v", err)
	}
	lv, err := note.NewVerifier(keyArg(logKey, false))
	if err != nil {
		return fmt.Errorf("log key: %v", err)
	}
	data, err := os.ReadFile(noteFile)
	if err != nil {
		return err
	}
	n, err := note.Open(data, note.VerifierList(lv))
	if err != nil {
		return fmt.Errorf("log signature: %v", err)
	}
	cp, err := parseCheckpoint(n.Text)
	if err != nil {
		return err
	}
	if cp.origin != lv.Name() {
		return fmt.Errorf("checkpoint origin %q is not the log key name %q", cp.origin, lv.Name())
	}
	found, latest := false, uint64(0)
	for _, s := range n.UnverifiedSigs {
		if s.Name != w.name || s.Hash != w.id {
			continue
		}
		ts, err := w.check(s.Base64, n.Text)
		if err != nil {
			return fmt.Errorf("cosignature by %s: %v", w.name, err)
		}
		if ts > uint64(time.Now().Unix())+maxFuture {
			return fmt.Errorf("cosignature by %s: timestamp %d is in the future", w.name, ts)
		}
		if !found || ts > latest {
			found, latest = true, ts
		}
	}
	if !found {
		return fmt.Errorf("no cosignature by %s+%08x", w.name, w.id)
	}
	fmt.Printf("OK %s %d cosigned at %d\n", cp.origin, cp.size, latest)
	return nil
}

// entry is the stored latest cosigned checkpoint of one log.
type entry struct {
	Size int64     `json:"size"`
	Hash tlog.Hash `json:"hash"` // base64 root hash
	Note string    `json:"note"` // the signed checkpoint as submitted
}

type witness struct {
	key       *cosigner
	logs      map[string]note.Verifiers // by origin
	stateFile string
	mu        sync.Mutex // held from the old size check until the state is saved
	state     map[string]entry
}

func serve(listen, keyFile, stateFile string, logKeys []string) error {
	key, err := parsePrivate(keyArg(keyFile, true))
	if err != nil {
		return fmt.Errorf("%s: %v", keyFile, err)
	}
	w := &witness{key: key, stateFile: stateFile, state: map[string]entry{}, logs: map[string]note.Verifiers{}}
	byName := map[string][]note.Verifier{}
	for _, arg := range logKeys {
		v, err := note.NewVerifier(keyArg(arg, false))
		if err != nil {
			return fmt.Errorf("log key %s: %v", arg, err)
		}
		byName[v.Name()] = append(byName[v.Name()], v)
	}
	for name, vs := range byName {
		w.logs[name] = note.VerifierList(vs...)
	}
	if data, err := os.ReadFile(stateFile); err == nil {
		err = json.Unmarshal(data, &w.state)
		if err != nil {
			return fmt.Errorf("%s: %v", stateFile, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	mux := http.NewServeMux()
	mux.HandleFunc("/add-checkpoint", w.handle)
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}).Serve(ln)
}

func (w *witness) handle(rw http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		http.Error(rw, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	code, ctype, body := http.StatusBadRequest, "text/plain; charset=utf-8", "request body too large or unreadable\n"
	if req, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, maxRequest)); err == nil {
		code, ctype, body = w.add(req)
	}
	log.Printf("add-checkpoint: %d %s", code, strings.TrimSpace(body))
	rw.Header().Set("Content-Type", ctype)
	rw.WriteHeader(code)
	io.WriteString(rw, body)
}

// parseRequest splits an add-checkpoint request body into the old size, the
// consistency proof, the signed checkpoint note and its parsed text.
func parseRequest(req string) (old int64, proof tlog.TreeProof, signed string, cp checkpoint, err error) {
	head, signed, ok := strings.Cut(req, "\n\n") // proof lines are never empty
	lines := strings.Split(head, "\n")
	if !ok || !strings.HasPrefix(lines[0], "old ") {
		err = errors.New("body is not an old size line, proof lines and an empty line, then a checkpoint")
	} else if old, err = parseDecimal(lines[0][4:]); err != nil {
		err = fmt.Errorf("old size: %v", err)
	} else if len(lines)-1 > maxProofLen {
		err = fmt.Errorf("more than %d consistency proof lines", maxProofLen)
	}
	for _, l := range lines[1:] {
		var h tlog.Hash
		if err == nil {
			h, err = parseHash(l)
			proof = append(proof, h)
		}
	}
	if err == nil && !strings.Contains(signed, "\n\n") {
		err = errors.New("checkpoint is not a signed note")
	} else if err == nil {
		cp, err = parseCheckpoint(noteText(signed))
	}
	return old, proof, signed, cp, err
}

// add runs an add-checkpoint request and returns the status code, content type
// and body of the response.
func (w *witness) add(req []byte) (int, string, string) {
	fail := func(code int, format string, args ...any) (int, string, string) {
		return code, "text/plain; charset=utf-8", fmt.Sprintf(format, args...) + "\n"
	}
	old, proof, rest, cp, err := parseRequest(string(req))
	if err != nil {
		return fail(400, "%v", err)
	}
	verifiers, ok := w.logs[cp.origin]
	if !ok {
		return fail(404, "unknown log origin %q", cp.origin)
	}
	n, err := note.Open([]byte(rest), verifiers)
	if err != nil {
		var unverified *note.UnverifiedNoteError
		var invalid *note.InvalidSignatureError
		if errors.As(err, &unverified) || errors.As(err, &invalid) {
			return fail(403, "log signature: %v", err)
		}
		return fail(400, "checkpoint note: %v", err)
	}
	if old > cp.size {
		return fail(400, "old size %d is larger than the checkpoint size %d", old, cp.size)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	prev, seen := w.state[cp.origin]
	if old != prev.Size {
		return 409, "text/x.tlog.size", fmt.Sprintf("%d\n", prev.Size)
	}
	if !seen {
		prev.Hash = sha256.Sum256(nil) // RFC 6962 root of the empty tree
	}
	switch {
	case old == cp.size || old == 0:
		if len(proof) != 0 {
			return fail(422, "consistency proof from size %d to %d must be empty", old, cp.size)
		}
		if old == cp.size && cp.hash != prev.Hash {
			return fail(409, "root hash at size %d differs from the cosigned one", old)
		}
	default:
		if err := tlog.CheckTree(proof, cp.size, cp.hash, old, prev.Hash); err != nil {
			return fail(422, "consistency proof from size %d to %d: %v", old, cp.size, err)
		}
	}
	w.state[cp.origin] = entry{cp.size, cp.hash, rest}
	if err := w.save(); err != nil {
		if seen {
			w.state[cp.origin] = prev
		} else {
			delete(w.state, cp.origin)
		}
		return fail(500, "saving state: %v", err)
	}
	return 200, "text/plain; charset=utf-8", w.key.cosign(n.Text, uint64(time.Now().Unix()))
}

// save writes the state to a temporary file, syncs it and renames it over
// the state file, then syncs the directory.
func (w *witness) save() error {
	data, _ := json.MarshalIndent(w.state, "", "  ")
	tmp := w.stateFile + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(data, '\n'))
	for _, step := range []func() error{f.Sync, f.Close, func() error { return os.Rename(tmp, w.stateFile) }} {
		if err == nil {
			err = step()
		}
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(w.stateFile)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
