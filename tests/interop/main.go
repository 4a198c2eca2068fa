// Command interop checks tim-audit's evidence with Go's own implementation
// of the formats, golang.org/x/mod/sumdb/note and sumdb/tlog, and makes
// keys, notes and stored hashes for tim-audit to check in turn.
//
//	interop verify VKEY PROOF [OLD_CHECKPOINT CONSISTENCY]
//	    Checks the tlog-proof file PROOF: its checkpoint note is signed by
//	    the verifier key in the file VKEY, for the origin named by the key,
//	    and its inclusion proof leads from the leaf data in its extra line
//	    to the checkpoint's root. With OLD_CHECKPOINT (a signed checkpoint
//	    note) and CONSISTENCY (one base64 hash per line), also checks that
//	    the older tree is a prefix of the proof's tree.
//	interop sign NAME TEXT
//	    Makes a key named NAME and prints its signer key, its verifier key
//	    and the note of the file TEXT signed with it.
//	interop tree N
//	    Prints the stored hashes of the leaves "leaf 0" to "leaf N-1".
//
// It exits with status 1 and the reason on standard error when a check fails.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 3 && args[0] == "verify", len(args) == 5 && args[0] == "verify":
		return verify(args[1:])
	case len(args) == 3 && args[0] == "sign":
		return sign(args[1], args[2])
	case len(args) == 2 && args[0] == "tree":
		return tree(args[1])
	}
	return errors.New("usage: interop verify VKEY PROOF [OLD_CHECKPOINT CONSISTENCY] | sign NAME TEXT | tree N")
}

func verify(files []string) error {
	vkey, err := os.ReadFile(files[0])
	if err != nil {
		return err
	}
	verifier, err := note.NewVerifier(strings.TrimSpace(string(vkey)))
	if err != nil {
		return fmt.Errorf("verifier key: %v", err)
	}
	data, err := os.ReadFile(files[1])
	if err != nil {
		return err
	}
	head, signed, ok := strings.Cut(string(data), "\n\n")
	if !ok {
		return errors.New("proof: no blank line before the checkpoint")
	}
	lines := strings.Split(head, "\n")
	if lines[0] != "c2sp.org/tlog-proof@v1" {
		return errors.New("proof: wrong header line")
	}
	lines = lines[1:]
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "extra ") {
		return errors.New("proof: no extra line with the leaf data")
	}
	leaf, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(lines[0], "extra "))
	if err != nil {
		return fmt.Errorf("proof: extra: %v", err)
	}
	lines = lines[1:]
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		return errors.New("proof: no index line")
	}
	index, err := parseCount(strings.TrimPrefix(lines[0], "index "))
	if err != nil {
		return fmt.Errorf("proof: index: %v", err)
	}
	var record tlog.RecordProof
	for _, line := range lines[1:] {
		h, err := tlog.ParseHash(line)
		if err != nil {
			return fmt.Errorf("proof: hash: %v", err)
		}
		record = append(record, h)
	}
	checkpoint, err := openCheckpoint([]byte(signed), verifier)
	if err != nil {
		return err
	}
	if err := tlog.CheckRecord(record, checkpoint.N, checkpoint.Hash, index, tlog.RecordHash(leaf)); err != nil {
		return fmt.Errorf("inclusion proof of record %d in tree %d: %v", index, checkpoint.N, err)
	}
	if len(files) == 2 {
		fmt.Println("ok")
		return nil
	}

	signed2, err := os.ReadFile(files[2])
	if err != nil {
		return err
	}
	old, err := openCheckpoint(signed2, verifier)
	if err != nil {
		return err
	}
	text, err := os.ReadFile(files[3])
	if err != nil {
		return err
	}
	var consistency tlog.TreeProof
	if body := strings.TrimSuffix(string(text), "\n"); body != "" {
		for _, line := range strings.Split(body, "\n") {
			h, err := tlog.ParseHash(line)
			if err != nil {
				return fmt.Errorf("consistency proof: hash: %v", err)
			}
			consistency = append(consistency, h)
		}
	}
	if err := tlog.CheckTree(consistency, checkpoint.N, checkpoint.Hash, old.N, old.Hash); err != nil {
		return fmt.Errorf("consistency proof from %d to %d: %v", old.N, checkpoint.N, err)
	}
	fmt.Println("ok")
	return nil
}

// openCheckpoint opens a checkpoint note signed by verifier for the origin
// named by the key, as c2sp.org/tlog-checkpoint lays it out.
func openCheckpoint(msg []byte, verifier note.Verifier) (tlog.Tree, error) {
	n, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint: %v", err)
	}
	lines := strings.SplitN(n.Text, "\n", 4)
	if len(lines) < 4 {
		return tlog.Tree{}, errors.New("checkpoint: fewer than three lines")
	}
	if lines[0] != verifier.Name() {
		return tlog.Tree{}, fmt.Errorf("checkpoint: origin %q is not the key's name %q", lines[0], verifier.Name())
	}
	size, err := parseCount(lines[1])
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint: tree size: %v", err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		return tlog.Tree{}, fmt.Errorf("checkpoint: root hash: %v", err)
	}
	return tlog.Tree{N: size, Hash: root}, nil
}

func parseCount(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != s {
		return 0, fmt.Errorf("%q is not a decimal count", s)
	}
	return n, nil
}

func sign(name, file string) error {
	text, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return err
	}
	msg, err := note.Sign(&note.Note{Text: string(text)}, signer)
	if err != nil {
		return err
	}
	fmt.Printf("%s\n%s\n%s", skey, vkey, msg)
	return nil
}

func tree(arg string) error {
	n, err := parseCount(arg)
	if err != nil {
		return err
	}
	var stored []tlog.Hash
	read := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		hashes := make([]tlog.Hash, len(indexes))
		for i, index := range indexes {
			hashes[i] = stored[index]
		}
		return hashes, nil
	})
	for i := int64(0); i < n; i++ {
		hashes, err := tlog.StoredHashes(i, []byte(fmt.Sprintf("leaf %d", i)), read)
		if err != nil {
			return err
		}
		stored = append(stored, hashes...)
	}
	for _, h := range stored {
		fmt.Println(h)
	}
	return nil
}
