// Command kstatus prints how the kstatus library (sigs.k8s.io/cli-utils/pkg/kstatus/status), the one
// Flux, kpt and Config Sync decide health with, reads each object given on stdin.
//
// Input: JSON or YAML objects (several YAML documents, or a kind: List) on stdin.
// Output: one JSON line per object, in order:
//
//	{"name": "...", "status": "Current", "message": "..."}
//	{"name": "...", "error": "..."}   when kstatus itself refuses the object
//
// It exits non-zero only when stdin cannot be read as objects.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func compute(obj *unstructured.Unstructured) result {
	out := result{Name: obj.GetName()}
	res, err := status.Compute(obj)
	if err != nil {
		out.Error = err.Error()
		return out
	}
	out.Status = res.Status.String()
	out.Message = res.Message
	return out
}

// objects reads every object on r; a kind: List is read as its items.
func objects(r io.Reader) ([]*unstructured.Unstructured, error) {
	decoder := utilyaml.NewYAMLOrJSONDecoder(bufio.NewReader(r), 4096)
	var all []*unstructured.Unstructured
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return all, nil
			}
			return nil, err
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		// Unstructured's own decoding keeps integers as int64, as the API machinery does.
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			return nil, err
		}
		if obj.IsList() {
			list, err := obj.ToList()
			if err != nil {
				return nil, err
			}
			for i := range list.Items {
				all = append(all, &list.Items[i])
			}
			continue
		}
		all = append(all, obj)
	}
}

func main() {
	objs, err := objects(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: reading objects from stdin: %v\n", err)
		os.Exit(2)
	}
	encoder := json.NewEncoder(os.Stdout)
	for _, obj := range objs {
		if err := encoder.Encode(compute(obj)); err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(2)
		}
	}
}
