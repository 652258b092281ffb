package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Result is the outcome of one round of one case. It is also the JSON object
// written, one per line, to [Options.JSON].
type Result struct {
	System    string  `json:"system"`    // "loft", "raw", "raw-batched", "go-chan", ...
	Transport string  `json:"transport"` // "unix", "tcp", "pipe", "inproc", "shm", ...
	Pattern   string  `json:"pattern"`   // "oneway", "pingpong", "call", ...
	Size      int     `json:"size"`      // payload bytes
	Mode      string  `json:"mode"`      // "blocking" or "polling"
	Inflight  int     `json:"inflight,omitempty"`
	Msgs      int64   `json:"msgs"`       // messages (or round trips) measured
	MsgsPerS  float64 `json:"msgs_per_s"` // messages (or round trips) per second
	MBPerS    float64 `json:"mb_per_s"`   // payload megabytes (1e6 bytes) per second: MsgsPerS*Size, one way
	P50ns     int64   `json:"p50_ns"`     // round trip for pingpong; 0 where not measured
	P99ns     int64   `json:"p99_ns"`
	Round     int     `json:"round"` // which round, from 1 (the table shows medians over rounds)
	// Pinned is set when each side ran on its own CPU ([Case.Pin]).
	Pinned bool `json:"pinned,omitempty"`

	// CPU time (user and system, of the whole process) and heap
	// allocations per message on each side, where measured (loft's
	// one-way cases): the receiver's from its first message to its last,
	// the sender's over its sending loop.
	SendCPUns  float64 `json:"send_cpu_ns_per_msg,omitempty"`
	RecvCPUns  float64 `json:"recv_cpu_ns_per_msg,omitempty"`
	SendAllocs float64 `json:"send_allocs_per_msg,omitempty"`
	RecvAllocs float64 `json:"recv_allocs_per_msg,omitempty"`

	// For loft's ping-pong over a Unix socket or TCP: the p50 and p99 of a
	// raw socket ping-pong of the same size between the same two
	// processes, measured in blocks alternating with loft's round trips
	// (see [MeasurePaired]). The raw rows of a run come from another pair
	// of processes, at another time.
	PairRawP50ns int64 `json:"pair_raw_p50_ns,omitempty"`
	PairRawP99ns int64 `json:"pair_raw_p99_ns,omitempty"`

	Err string `json:"error,omitempty"`
}

// Case is one benchmark: one system, transport, pattern, mode and size.
type Case struct {
	// System, Transport, Pattern and Mode identify the case and are copied
	// into its results; see [Result] for the usual values.
	System, Transport, Pattern, Mode string

	// Size is the payload size in bytes. Zero means the case runs at every
	// selected size ([Options.Sizes], by default 64, 4096 and 1 MiB), with the
	// size in [Env.Size]; a non-zero size runs only if it is selected.
	Size int
	// MaxSize, if non-zero, leaves out the sizes above it.
	MaxSize int
	// Inflight is copied to the results (messages or calls in flight, if the
	// case has such a notion).
	Inflight int
	// Rate is copied to Env.Rate: a fixed rate for ping-pong cases.
	Rate int
	// RawTransport names the transport of the "raw" row that the table's
	// "vs raw" column compares this case with; empty means Transport. A loft
	// case over shared memory might compare with "unix".
	RawTransport string
	// Pin puts each side on its own CPU for the round, where the machine
	// has two or more: this process on the first CPU it may use, its
	// children on the others in turn. Busy-polling cases set it: on two
	// CPUs, a side that spins shares its CPU with the side it waits for
	// otherwise, whenever the kernel places them together.
	Pin bool

	// Run measures one round. Budget bounds its duration: the case should
	// stop after roughly that long or after enough messages. It sets Msgs,
	// MsgsPerS and, where measured, P50ns and P99ns; the harness fills in the
	// identifying fields, Inflight, Round and, if zero, MBPerS (MsgsPerS*Size).
	// Run must return when ctx ends; the harness ends ctx, and kills the
	// case's children, when the case overruns its time limit.
	Run func(ctx context.Context, env Env) (Result, error)
}

// Name is "system/transport/pattern/size", the string [Options.Filter] matches.
func (c Case) Name() string {
	return fmt.Sprintf("%s/%s/%s/%d", c.System, c.Transport, c.Pattern, c.Size)
}

// Env is what the harness gives a case for one round.
type Env struct {
	// Budget is roughly how long the case should measure for.
	Budget time.Duration
	// Size is the payload size in bytes for this run.
	Size int
	// Quick is set in quick mode; cases may use it to do less setup.
	Quick bool
	// Rate, when non-zero, is the fixed rate (round trips per second) at
	// which a ping-pong case paces itself instead of saturating.
	Rate int
	// Spawn starts a child process running the given role (see
	// [RegisterRole]) with the given arguments. The harness kills and reaps it
	// when the case returns, and when ctx ends.
	Spawn func(ctx context.Context, role string, args ...string) (*Child, error)
	// SpawnFiles is Spawn that also passes files to the child, where they are
	// descriptors 3, 4, ... (see [InheritedFile]). The caller keeps its copies
	// and should close them once the child has started.
	SpawnFiles func(ctx context.Context, role string, files []*os.File, args ...string) (*Child, error)
}

var (
	registryMu sync.Mutex
	registry   []Case
)

// Register adds cases to the set that [Run] runs. It is called by init
// functions in this package (the raw baselines) and by packages that add
// their own systems.
func Register(c ...Case) {
	registryMu.Lock()
	defer registryMu.Unlock()
	for _, x := range c {
		if x.Run == nil {
			panic("bench: Register of case " + x.Name() + " with nil Run")
		}
	}
	registry = append(registry, c...)
}

// Cases returns the registered cases, in registration order.
func Cases() []Case {
	registryMu.Lock()
	defer registryMu.Unlock()
	return append([]Case(nil), registry...)
}

// DefaultSizes are the payload sizes run when [Options.Sizes] is empty.
var DefaultSizes = []int{64, 4096, 1 << 20}

// Options configures [Run].
type Options struct {
	// Quick runs one round with short budgets (about 300 ms per case).
	Quick bool
	// Rounds is the number of rounds; 0 means 3, or 1 when Quick.
	Rounds int
	// Budget overrides the per-case, per-round budget (default 1 s, or
	// 300 ms when Quick).
	Budget time.Duration
	// Filter selects cases by their name "system/transport/pattern/size": a
	// regular expression if it compiles as one, else a substring. Empty
	// selects all.
	Filter string
	// Sizes overrides DefaultSizes.
	Sizes []int
	// JSON, if non-nil, receives one JSON object per line per case per round,
	// as results arrive.
	JSON io.Writer
	// Table, if non-nil, receives a table of medians over rounds at the end.
	Table io.Writer
	// Progress, if non-nil, receives a progress bar (the CLI passes stderr).
	Progress io.Writer
	// NoWarmup skips the unreported run of the first case before the
	// first round (see run).
	NoWarmup bool
}

// caseSlack is added to ten budgets to make a case's time limit, to cover
// starting children (slow under the race detector).
var caseSlack = 5 * time.Second

// Run runs the selected cases, round by round, and returns every round's
// result. Failed rounds are results with Err set; Run then also returns an
// error that counts them. It returns early with ctx's error if ctx ends.
func Run(ctx context.Context, opts Options) ([]Result, error) {
	return run(ctx, Cases(), opts)
}

func run(ctx context.Context, all []Case, opts Options) ([]Result, error) {
	cases, err := selectCases(all, opts)
	if err != nil {
		return nil, err
	}
	rounds := opts.Rounds
	if rounds <= 0 {
		rounds = 3
		if opts.Quick {
			rounds = 1
		}
	}
	budget := opts.Budget
	if budget <= 0 {
		budget = time.Second
		if opts.Quick {
			budget = 300 * time.Millisecond
		}
	}
	var bar *progressbar.ProgressBar
	if opts.Progress != nil {
		bar = progressbar.NewOptions(len(cases)*rounds,
			progressbar.OptionSetWriter(opts.Progress),
			progressbar.OptionSetDescription("bench"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionClearOnFinish(),
		)
	}
	var enc *json.Encoder
	if opts.JSON != nil {
		enc = json.NewEncoder(opts.JSON)
	}
	// The first case a process runs is slow throughout its budget (over
	// a Unix socket: 4.5 M msgs/s in round 1, 8-13 M in round 2, the other
	// cases alike in both): run it once first, for a budget, and keep
	// nothing of it, so that no system of the run is measured cold.
	if len(cases) > 0 && !opts.NoWarmup && ctx.Err() == nil {
		if bar != nil {
			bar.Describe(fmt.Sprintf("warm-up   %-32s", cases[0].Name()))
		}
		runCase(ctx, cases[0], budget, opts.Quick)
	}
	var results []Result
	failed := 0
	var firstErr string
loop:
	for r := 1; r <= rounds; r++ {
		for _, c := range cases {
			if ctx.Err() != nil {
				break loop
			}
			if bar != nil {
				bar.Describe(fmt.Sprintf("round %d/%d %-32s", r, rounds, c.Name()))
			}
			res := runCase(ctx, c, budget, opts.Quick)
			res.Round = r
			if ctx.Err() != nil && res.Err != "" {
				break loop // interrupted, not a failure of the case
			}
			if res.Err != "" {
				failed++
				if firstErr == "" {
					firstErr = c.Name() + ": " + res.Err
				}
			}
			results = append(results, res)
			if enc != nil {
				if err := enc.Encode(res); err != nil {
					return results, fmt.Errorf("bench: writing JSON: %w", err)
				}
			}
			if bar != nil {
				bar.Add(1)
			}
		}
	}
	if bar != nil {
		bar.Finish()
	}
	if opts.Table != nil {
		if err := writeTable(opts.Table, results, cases); err != nil {
			return results, fmt.Errorf("bench: writing table: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return results, err
	}
	if failed > 0 {
		return results, fmt.Errorf("bench: %d of %d runs failed; first: %s", failed, len(results), firstErr)
	}
	return results, nil
}

// selectCases expands size-generic cases and applies the filter.
func selectCases(all []Case, opts Options) ([]Case, error) {
	sizes := opts.Sizes
	if len(sizes) == 0 {
		sizes = DefaultSizes
	}
	match := func(string) bool { return true }
	if opts.Filter != "" {
		if re, err := regexp.Compile(opts.Filter); err == nil {
			match = re.MatchString
		} else {
			match = func(s string) bool { return strings.Contains(s, opts.Filter) }
		}
	}
	var out []Case
	for _, c := range all {
		for _, s := range sizes {
			if s <= 0 || (c.Size != 0 && c.Size != s) || (c.MaxSize > 0 && s > c.MaxSize) {
				continue
			}
			x := c
			x.Size = s
			if match(x.Name()) {
				out = append(out, x)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("bench: no case matches filter %q and sizes %v", opts.Filter, sizes)
	}
	return out, nil
}

// runCase runs one round of one case (with Size set) under a time limit, and
// kills and reaps the children it spawned, whatever happens.
func runCase(parent context.Context, c Case, budget time.Duration, quick bool) Result {
	limit := 10*budget + caseSlack
	ctx, cancel := context.WithTimeoutCause(parent, limit, fmt.Errorf("case exceeded its time limit of %v", limit))
	defer cancel()
	deadline := time.Now().Add(limit + 2*time.Second) // children give up a bit after the harness

	var cpus []int // this process's CPU, then the children's, when pinned
	if c.Pin {
		if cpus = pinCPUs(); cpus != nil {
			restore, err := pinProcess(cpus[0])
			if err != nil {
				return Result{System: c.System, Transport: c.Transport, Pattern: c.Pattern, Size: c.Size, Mode: c.Mode,
					Err: fmt.Sprintf("pinning to CPU %d: %v", cpus[0], err)}
			}
			defer restore()
		}
	}
	var mu sync.Mutex
	var children []*Child
	spawn := func(sctx context.Context, role string, files []*os.File, args ...string) (*Child, error) {
		mu.Lock()
		defer mu.Unlock()
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		cpu := -1
		if cpus != nil {
			cpu = cpus[1+len(children)%(len(cpus)-1)]
		}
		ch, err := startChild(sctx, role, files, deadline, cpu, args...)
		if err == nil {
			context.AfterFunc(ctx, ch.kill)
			children = append(children, ch)
		}
		return ch, err
	}
	env := Env{
		Budget: budget,
		Size:   c.Size,
		Quick:  quick,
		Rate:   c.Rate,
		Spawn: func(sctx context.Context, role string, args ...string) (*Child, error) {
			return spawn(sctx, role, nil, args...)
		},
		SpawnFiles: spawn,
	}

	type outcome struct {
		res Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		var o outcome
		defer func() {
			if p := recover(); p != nil {
				o.err = fmt.Errorf("panic: %v", p)
			}
			done <- o
		}()
		o.res, o.err = c.Run(ctx, env)
	}()
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		// Killing the children (done by AfterFunc) unblocks reads and writes
		// on connections to them; give the case a moment to notice.
		select {
		case o = <-done:
		case <-time.After(3 * time.Second):
			o.err = fmt.Errorf("%v; case did not return, abandoned", context.Cause(ctx))
		}
	}
	if o.err == nil && ctx.Err() != nil {
		o.err = context.Cause(ctx)
	}

	// Reap every child, and attach stderr tails to an error.
	mu.Lock()
	kids := children
	children = nil
	mu.Unlock()
	for _, ch := range kids {
		if err := ch.Close(); err != nil && o.err == nil {
			o.err = err
		}
	}
	if o.err != nil {
		msg := o.err.Error()
		for _, ch := range kids {
			if t := strings.TrimSpace(ch.StderrTail()); t != "" && !strings.Contains(msg, t) {
				msg += fmt.Sprintf("; child %s (pid %d) stderr: %s", ch.Role, ch.Pid(), t)
			}
		}
		o.res.Err = msg
	}

	r := o.res
	r.System, r.Transport, r.Pattern, r.Size = c.System, c.Transport, c.Pattern, c.Size
	if r.Mode == "" {
		r.Mode = c.Mode
	}
	if r.Inflight == 0 {
		r.Inflight = c.Inflight
	}
	r.Pinned = cpus != nil
	if r.MBPerS == 0 {
		r.MBPerS = r.MsgsPerS * float64(c.Size) / 1e6
	}
	if r.Err == "" && (r.Msgs <= 0 || r.MsgsPerS <= 0) {
		r.Err = "case reported no messages"
	}
	return r
}

// formatCount prints n with a k/M/G suffix.
func formatCount(n float64) string {
	switch {
	case n >= 1e9:
		return strconv.FormatFloat(n/1e9, 'f', 2, 64) + "G"
	case n >= 1e6:
		return strconv.FormatFloat(n/1e6, 'f', 2, 64) + "M"
	case n >= 1e3:
		return strconv.FormatFloat(n/1e3, 'f', 1, 64) + "k"
	default:
		return strconv.FormatFloat(n, 'f', 0, 64)
	}
}
