// Package kubernetes holds no code. Its directory has the manifests
// (cohort.yaml) and the image build (Dockerfile) that run bin/cohort-node
// as a 3-pod StatefulSet, and its test checks that they keep the flags,
// ports and probes README.md describes, against cmd/node's flag set, so
// that the documentation and the manifests cannot drift apart silently.
package kubernetes
