#!/bin/sh
# `flashmoe chat` end to end, on the tiny fixture model (random weights: the text is gibberish, but
# it is deterministic for a seed). Through a pipe: --hide-think removes exactly the thinking lines.
# On a terminal (tmux): the prompt, the streamed answer with its thinking faint, the speed line,
# /stats, multi-line input, /think off, /system, /clear, /quit and Ctrl-D, as they appear on screen.
# Prints one "ok NAME" / "not ok NAME" line per check.
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build}
BIN=$BUILD/flashmoe
MODEL=tests/fixtures/tiny-a-f32
OPTS="-m $MODEL -n 12 --seed 7 --think-budget 3"
# one tmux server (socket) per session: a server that was just killed may still be exiting
SOCK_BASE=flashmoe-chat-test-$$
SOCK=$SOCK_BASE-1
tmp=$(mktemp -d)
trap 'for s in 1 2; do tmux -L "$SOCK_BASE-$s" kill-server 2>/dev/null; done; rm -rf "$tmp"' EXIT

ok() { echo "ok $1"; }
notok() {
    echo "not ok $1"
    shift
    for l in "$@"; do echo "  $l"; done
}
# check NAME CONDITION-COMMAND... : ok when the command succeeds
check() {
    name=$1
    shift
    if "$@"; then ok "$name"; else notok "$name" "failed: $*"; fi
}

# ---- through a pipe ----

# /stats says how the experts are read: mapped (the default for a model that fits), or direct with the
# cache's hit rate and, since prefetch is on by default there, the prediction's
printf 'Hello\n/stats\n' | "$BIN" chat $OPTS 2>/dev/null >"$tmp/st_map"
check chat_stats_experts_mmap grep -q '^experts: --io mmap' "$tmp/st_map"
printf 'Hello\n/stats\n' | "$BIN" chat $OPTS --io direct --cache-mb 1 2>/dev/null >"$tmp/st_dir"
check chat_stats_experts_direct grep -q '^experts: --io direct, [0-9.]* GB read, cache hits [0-9.]*% of [0-9]*; prefetch: next-layer prediction right for [0-9.]*% of experts' "$tmp/st_dir"

# numbers of the speed line vary from run to run
norm() { sed 's/[0-9.]* tok\/s/N tok\/s/g'; }

printf 'Hello\n' | "$BIN" chat $OPTS 2>"$tmp/err1" | norm >"$tmp/shown"
printf 'Hello\n' | "$BIN" chat $OPTS --hide-think 2>"$tmp/err2" | norm >"$tmp/hidden"
n_shown=$(wc -l <"$tmp/shown")
n_hidden=$(wc -l <"$tmp/hidden")
k=$((n_shown - n_hidden))
# shown = banner, k thinking lines, the answer, the speed line; hidden = the same without the thinking
if [ "$k" -ge 1 ] && sed "2,$((k + 1))d" "$tmp/shown" | cmp -s - "$tmp/hidden" && [ ! -s "$tmp/err1" ]; then
    ok chat_pipe_hide_think
else
    notok chat_pipe_hide_think "shown:" "$(cat "$tmp/shown")" "hidden:" "$(cat "$tmp/hidden")" "$(cat "$tmp/err1")"
fi
# later turns resume from the saved state of the history (the template re-renders earlier answers without
# their thinking), and answer exactly as a run that recomputes the whole conversation every turn
printf 'Hello\nHow are you\nBye now\n' | "$BIN" chat $OPTS 2>/dev/null | norm >"$tmp/reuse"
printf 'Hello\nHow are you\nBye now\n' | "$BIN" chat $OPTS --no-reuse 2>/dev/null | norm >"$tmp/noreuse"
check chat_pipe_state_reused grep -q '^\[prompt [0-9]* tokens ([1-9][0-9]* reused)' "$tmp/reuse"
check chat_pipe_reuse_same_answers cmp -s "$(sed 's/([0-9]* reused)//' "$tmp/reuse" >"$tmp/a"; echo "$tmp/a")" \
    "$(sed 's/([0-9]* reused)//' "$tmp/noreuse" >"$tmp/b"; echo "$tmp/b")"
check chat_pipe_speed_line grep -q '^\[prompt [0-9]* tokens (0 reused), N tok/s | generated 12 tokens, token limit, N tok/s\]$' "$tmp/shown"

# ---- on a terminal ----

if ! command -v tmux >/dev/null 2>&1; then
    notok chat_tty "tmux is not installed"
    exit 0
fi

screen() { tmux -L "$SOCK" capture-pane -p -J -t chat -S - "$@" 2>/dev/null; }
# wait_for TEXT [COUNT]: until TEXT appears COUNT times (default 1) on the screen, for up to 20 s
wait_for() {
    i=0
    while [ $i -lt 200 ]; do
        [ "$(screen | grep -cF -- "$1")" -ge "${2:-1}" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "  timed out waiting for '$1' (x${2:-1}); the screen:"
    screen | grep -v '^$' | sed 's/^/    /'
    return 1
}
send() { tmux -L "$SOCK" send-keys -t chat "$@"; }
start() {
    tmux -L "$SOCK" -f /dev/null new-session -d -s chat -x 200 -y 50 \
        "$BIN chat $OPTS $*; echo chat exited with status \$?; sleep 60"
}
stop() { tmux -L "$SOCK" kill-server 2>/dev/null; }

# the text the model produced, letters and digits only (the terminal shows control characters
# and broken UTF-8 from the random model differently from a pipe)
alnum() { LC_ALL=C tr -cd 'A-Za-z0-9'; }

start
if wait_for '>>> '; then ok chat_tty_prompt; else notok chat_tty_prompt; fi

send 'Hello' Enter
if wait_for 'tok/s]'; then
    screen >"$tmp/screen1"
    screen -e >"$tmp/screen1e"
    # thinking and answer: between the line of the question and the speed line
    on_screen=$(sed -n '/^>>> Hello$/,/^\[prompt /p' "$tmp/screen1" | sed '1d;$d' | alnum)
    in_pipe=$(sed '1d;$d' "$tmp/shown" | alnum)
    check chat_tty_answer_shown [ -n "$on_screen" -a "$on_screen" = "$in_pipe" ]
    # the thinking, on the line after the question, is faint (ESC[2m); the answer is not
    sed -n '/>>> Hello$/{n;p;n;p;}' "$tmp/screen1e" >"$tmp/think_answer"
    check chat_tty_thinking_faint [ "$(head -n 1 "$tmp/think_answer" | grep -c "$(printf '^\033\\[2m')")" = 1 \
        -a "$(tail -n 1 "$tmp/think_answer" | grep -c "$(printf '\033\\[2m')")" = 0 ]
    check chat_tty_speed_line grep -q '^\[prompt [0-9]* tokens (0 reused), [0-9.]* tok/s | generated 12 tokens, token limit, [0-9.]* tok/s\]$' "$tmp/screen1"
else
    notok chat_tty_answer_shown "no speed line after the answer"
fi

send '/stats' Enter
if wait_for 'sampling: temp'; then
    screen >"$tmp/screen2"
    check chat_tty_stats grep -qF 'generated 12 tokens (3 thinking)' "$tmp/screen2"
    check chat_tty_stats_context grep -q '^context: [0-9]* of 512 tokens in use; conversation: 2 messages, 1 turns$' "$tmp/screen2"
else
    notok chat_tty_stats
fi

# a line ending in \ continues: one message, one answer
send 'line one\' Enter
wait_for '... ' >/dev/null
send 'line two' Enter
wait_for 'tok/s]' 2 >/dev/null
# a """ block
send '"""' Enter 'block a' Enter 'block b"""' Enter
wait_for 'tok/s]' 3 >/dev/null
send '/stats' Enter
if wait_for 'conversation: 6 messages, 3 turns'; then ok chat_tty_multiline; else notok chat_tty_multiline; fi

send '/think off' Enter 'Hi' Enter
wait_for 'tok/s]' 4 >/dev/null
send '/stats' Enter
if wait_for '(0 thinking)'; then ok chat_tty_think_off; else notok chat_tty_think_off; fi

send '/system Be brief.' Enter '/system' Enter
if wait_for 'system prompt: Be brief.'; then ok chat_tty_system; else notok chat_tty_system; fi

send '/clear' Enter '/stats' Enter
if wait_for 'context: 0 of 512 tokens in use; conversation: 1 messages, 0 turns'; then
    ok chat_tty_clear
else
    notok chat_tty_clear
fi

send '/quit' Enter
if wait_for 'chat exited with status 0'; then ok chat_tty_quit; else notok chat_tty_quit; fi
stop

SOCK=$SOCK_BASE-2
start
wait_for '>>> ' >/dev/null
send C-d
if wait_for 'chat exited with status 0'; then ok chat_tty_ctrl_d; else notok chat_tty_ctrl_d; fi
stop
