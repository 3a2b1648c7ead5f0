// Package testlog holds what tests use to read what a logger wrote.
package testlog
