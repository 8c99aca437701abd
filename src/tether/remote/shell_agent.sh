# tether's POSIX-shell agent: the remote engine for hosts without python3 >= 3.11.
#
# Run as `/bin/sh -c "$THIS" tether-sh` with the ssh channel on stdin/stdout.
# The client sends text lines (spec, then "cancel" lines); every byte of argv,
# environment and reasons arrives as \ooo escapes that only printf decodes:
# nothing the user typed is ever parsed by this shell. Output goes back in the
# frames of tether.remote.protocol: a kind byte, a 4-byte length, the payload.
#
# Membership: the job's session (setsid), its process group, the cookie
# TETHER_JOB_ID in /proc/PID/environ (processes younger than the job only),
# and children of known members. No cgroup, subreaper, pidfd or watchdog: the
# report's caveats say what that leaves open.
set -u
umask 077
JOB_PATH=${PATH-}
PATH=${PATH:+$PATH:}/usr/bin:/bin:/usr/sbin:/sbin
export PATH
AGENT=$$

# (Files are created with `true >FILE`, never `: >FILE`: a failed redirection
# on a special builtin such as `:` exits a POSIX shell, and another agent
# finishing the same job may remove its directory at any moment.)

# -- frames -----------------------------------------------------------------

_oct() { _b=$(($1 & 255)); _o="\\$((_b >> 6))$(((_b >> 3) & 7))$((_b & 7))"; }

# frame KIND FILE: FILE as one frame, written by one cat. Frames from several
# writers (output pumps, the control reader) interleave whole: each is at most
# PIPE_BUF bytes, and a pipe write that small is atomic.
frame() {
	_n=$(wc -c <"$2")
	_n=$((_n))
	_oct $((_n >> 24)); _h=$_o
	_oct $((_n >> 16)); _h=$_h$_o
	_oct $((_n >> 8)); _h=$_h$_o
	_oct $_n; _h=$_h$_o
	printf "$1$_h" >"$2.frame"
	cat "$2" >>"$2.frame"
	# Only external commands write to the channel: if it is gone, SIGPIPE
	# ends the cat, never this shell (which must go on to terminate the job).
	cat "$2.frame"
	rm -f "$2.frame"
}

# say KIND TEXT FILE
say() { printf '%s' "$2" >"$3"; frame "$1" "$3"; rm -f "$3"; }

# dec ESCAPED: the bytes, in $_v (a trailing x keeps trailing newlines).
dec() {
	case $1 in *[!\\0-7]*) _v=; return 1 ;; esac
	_v=$(printf "$1x")
	_v=${_v%x}
}

# hex FILE: a file's bytes as hex (for command lines: NULs and anything else).
hex() { od -An -tx1 <"$1" 2>/dev/null | tr -d ' \n'; }

bail() { # MESSAGE: one ERROR frame, then exit
	say X "{\"message\":\"$1\",\"exit_code\":125}" "$TMP_FRAME.err"
	rm -f "$TMP_FRAME.err"
	exit 3
}

now_ms() {
	if [ "$HAVE_NS" = 1 ]; then
		_t=$(date +%s%N)
		NOW=$((${_t%??????} - T0))
	else
		NOW=$(($(date +%s) * 1000 - T0))
	fi
}

# -- where records live (as tether.journal.journal_dir) ----------------------

UID_=$(id -u)
if [ -n "${TETHER_RUNTIME_DIR-}" ]; then
	J=$TETHER_RUNTIME_DIR
elif [ "$UID_" = 0 ]; then
	J=/run/tether
elif [ -n "${XDG_RUNTIME_DIR-}" ]; then
	J=$XDG_RUNTIME_DIR/tether
else
	# As tether.journal.private_tmp_dir: /tmp/tether-UID if it is ours, else
	# the first /tmp/tether-UID.* of ours, else a new one. Another user can
	# plant a look-alike, never own one of ours.
	J=
	mkdir -m 700 "/tmp/tether-$UID_" 2>/dev/null
	for d in "/tmp/tether-$UID_" "/tmp/tether-$UID_".*; do
		if [ -d "$d" ] && [ ! -L "$d" ] && [ -O "$d" ]; then
			case $(ls -ld "$d" 2>/dev/null) in
			d???------*) J=$d && break ;;
			esac
		fi
	done
	[ -n "$J" ] || J=$(mktemp -d "/tmp/tether-$UID_.XXXXXXXX") || bail "cannot make a private journal directory in /tmp"
fi
TMP_FRAME=${TMPDIR:-/tmp}/tether-sh-$AGENT
mkdir -p "$J" 2>/dev/null
# Records steer signals: refuse a directory someone else could write to.
case $(ls -ld "$J" 2>/dev/null) in
d????w????* | d???????w?* | '') bail "journal directory $J is missing or writable by others" ;;
esac
[ -d "$J" ] && [ ! -L "$J" ] && [ -O "$J" ] || bail "journal directory $J is not a directory of uid $UID_"
[ -d /proc/self ] || bail "the shell agent needs /proc (Linux)"
cd "$J" || bail "cannot enter $J"
TMP_FRAME=$J/.sh-$AGENT

# -- HELLO --------------------------------------------------------------------

_st=
IFS= read -r _st </proc/$AGENT/stat
_rest=${_st##*) }
set -- $_rest
say H "{\"protocol\":1,\"engine\":\"sh\",\"mode\":\"sh\",\"pid\":$AGENT,\"identity\":[$AGENT,${20}],\"parent\":[$2,0],\"uid\":$UID_,\"python\":null,\"tether\":null}" "$TMP_FRAME.hello"

HAVE_NS=0
case $(date +%N 2>/dev/null) in [0-9][0-9][0-9]*) HAVE_NS=1 ;; esac
T0=0
now_ms
T0=$NOW
TICK=1
if sleep 0.05 2>/dev/null; then TICK=0.1; fi
CLK=$(getconf CLK_TCK 2>/dev/null || echo 100)
BTIME=0
while read -r _k _v; do [ "$_k" = btime ] && BTIME=$_v && break; done </proc/stat

# -- the spec ----------------------------------------------------------------

IFS= read -r OP || exit 3
STEPS=
LSIG=-
TREE_DELAY=0
TIMEOUT=-
ID=
REASON_IN=
set --
while IFS= read -r _line; do
	case $_line in
	end) break ;;
	"arg "*) dec "${_line#arg }" || bail "bad argument encoding"; set -- "$@" "$_v" ;;
	"env "*) dec "${_line#env }" || bail "bad environment encoding"; set -- "$@" "$_v" ;;
	"step "*) STEPS="$STEPS ${_line#step }" ;;
	"leader_signal "*) LSIG=${_line#leader_signal } ;;
	"tree_delay "*) TREE_DELAY=${_line#tree_delay } ;;
	"timeout "*) TIMEOUT=${_line#timeout } ;;
	"job "*) ID=${_line#job } ;;
	"reason "*) dec "${_line#reason }" && REASON_IN=$_v ;;
	esac
done
STEPS=${STEPS# }

# -- membership -----------------------------------------------------------------

# scan: every member alive now ("PID.START" words in $ALIVE); new members
# are registered under M/, members gone since the last scan get an end time.
scan() {
	ALIVE=
	NEW=
	for _d in /proc/[0-9]*; do
		_p=${_d#/proc/}
		[ "$_p" = "$AGENT" ] && continue
		IFS= read -r _st 2>/dev/null <"$_d/stat" || continue
		_rest=${_st##*) }
		# shellcheck disable=SC2086
		set -- $_rest
		[ "$1" = Z ] && continue # exited; its parent reaps it
		_k=$_p.${20}
		if [ -e "$M/$_k.how" ]; then
			ALIVE="$ALIVE $_k"
			continue
		fi
		_how=
		if [ -n "$SID" ] && [ "$4" = "$SID" ]; then
			_how=session
		elif [ -n "$SID" ] && [ "$3" = "$SID" ]; then
			_how=pgid
		elif [ -e "$M/parent.$2" ]; then
			_how=walk
		elif [ "${20}" -ge "$JOB_START" ] && [ ! -e "$M/no.$_k" ]; then
			# Younger than the job: does it carry the cookie? (Asked once: an
			# environment only changes by exec, and a member's exec stays one.)
			if grep -q -a -F "$COOKIE_VAR=$ID" "$_d/environ" 2>/dev/null; then
				_how=cookie
			else
				true >"$M/no.$_k"
			fi
		fi
		[ -n "$_how" ] || continue
		echo "$_how" >"$M/$_k.how"
		hex "$_d/cmdline" >"$M/$_k.cmd"
		true >"$M/parent.$_p"
		ALIVE="$ALIVE $_k"
		NEW="$NEW $_k"
	done
	now_ms
	for _f in "$M"/*.how; do
		[ -e "$_f" ] || continue
		_k=${_f##*/}
		_k=${_k%.how}
		case " $ALIVE " in *" $_k "*) continue ;; esac
		[ -e "$M/$_k.end" ] || echo "$NOW" >"$M/$_k.end"
		rm -f "$M/parent.${_k%.*}"
	done
	ALIVE=${ALIVE# }
	NEW=${NEW# }
}

# hit SIG KEYS...: signal members (once per step each), then CONT so a
# stopped member acts on a catchable signal now.
hit() {
	_sig=$1
	shift
	_n=0
	for _k in "$@"; do
		_p=${_k%.*}
		_s=$_sig
		if [ "$STEP_NO" = 1 ] && [ "$_p" = "$LEADER" ]; then
			[ "$LEADER_HIT" = 1 ] && continue # once per step: the tree delay hit it
			[ "$LSIG" != - ] && _s=$LSIG
		fi
		if kill -s "$_s" "$_p" 2>/dev/null; then
			echo "$_s" >>"$M/$_k.sig"
			_n=$((_n + 1))
		elif [ -e "/proc/$_p" ]; then
			true >"$M/$_k.denied"
		fi
		case $_s in KILL | STOP) ;; *) kill -s CONT "$_p" 2>/dev/null ;; esac
	done
	SIGNALLED=$((SIGNALLED + _n))
}

# terminate: run the policy's steps over the members until none is left.
terminate() {
	now_ms
	TERM_AT=$NOW
	true >"$D/steps"
	LEADER_HIT=0
	_nsteps=0
	for _s in $STEPS; do _nsteps=$((_nsteps + 1)); done
	STEP_NO=0
	SKIP_FROM=${1:-1}
	for _s in $STEPS; do
		STEP_NO=$((STEP_NO + 1))
		_sig=${_s%:*}
		_grace=${_s#*:}
		if [ "$STEP_NO" -lt "$_nsteps" ] && [ -e "$D/cancel.$SKIP_FROM" ]; then
			continue # a second cancel: on to the last step
		fi
		scan
		[ -n "$ALIVE" ] || break
		now_ms
		_at=$((NOW - TERM_AT))
		SIGNALLED=0
		if [ "$STEP_NO" = 1 ] && [ "$TREE_DELAY" -gt 0 ] && [ "$LSIG" != - ]; then
			for _k in $ALIVE; do
				[ "${_k%.*}" = "$LEADER" ] && hit "$_sig" "$_k" && LEADER_HIT=1
			done
			now_ms
			_until=$((NOW + TREE_DELAY))
			while [ "$NOW" -lt "$_until" ]; do sleep "$TICK"; now_ms; done
			scan
		fi
		# shellcheck disable=SC2086
		hit "$_sig" $ALIVE
		now_ms
		_until=$((NOW + _grace))
		while [ "$NOW" -lt "$_until" ]; do
			sleep "$TICK"
			scan # (updates NOW)
			[ -n "$ALIVE" ] || break
			# shellcheck disable=SC2086
			[ -z "$NEW" ] || hit "$_sig" $NEW # late members get this step too
			if [ "$STEP_NO" -lt "$_nsteps" ] && [ -e "$D/cancel.$SKIP_FROM" ]; then break; fi
		done
		now_ms
		_left=0
		for _k in $ALIVE; do _left=$((_left + 1)); done
		echo "step $_sig $_at $_grace $SIGNALLED $_left $((NOW - TERM_AT - _at))" >>"$D/steps"
		[ -n "$ALIVE" ] || break
	done
	scan
}

# report FILE: the RESULT payload (text; tether.remote.shell turns it into a Report).
report() {
	{
		echo "job $ID"
		echo "steps $STEPS"
		echo "btime $BTIME $CLK"
		echo "started $((T0 + TERM_AT))"
		echo "duration $((NOW - TERM_AT))"
		cat "$D/steps" 2>/dev/null
		for _f in "$M"/*.how; do
			[ -e "$_f" ] || continue
			_k=${_f##*/}
			_k=${_k%.how}
			IFS= read -r _how <"$_f"
			_cmd=
			IFS= read -r _cmd <"$M/$_k.cmd" # no newline at its end: read says 1

			_sigs=-
			if [ -e "$M/$_k.sig" ]; then
				_sigs=
				while IFS= read -r _x; do _sigs=$_sigs,$_x; done <"$M/$_k.sig"
				_sigs=${_sigs#,}
			fi
			_end=-
			[ -e "$M/$_k.end" ] && IFS= read -r _end <"$M/$_k.end" && _end=$((_end - TERM_AT))
			_state=-
			case " $ALIVE " in
			*" $_k "*)
				_st=
				IFS= read -r _st 2>/dev/null <"/proc/${_k%.*}/stat"
				_rest=${_st##*) }
				_state=${_rest%% *}
				_w=-
				IFS= read -r _w 2>/dev/null <"/proc/${_k%.*}/wchan" || _w=-
				echo "survivor ${_k%.*} ${_k#*.} ${_state:-?} ${_w:--} $_cmd"
				;;
			esac
			_denied=0
			[ -e "$M/$_k.denied" ] && _denied=1
			echo "member ${_k%.*} ${_k#*.} $_how $_sigs $_end $_denied $_cmd"
		done
	} >"$1"
}

# send_result REASON LINE...: the RESULT frame (LINEs, the reason, the
# report), then the job's files are removed.
send_result() {
	report "$TMP_FRAME.result"
	_reason=$1
	shift
	{
		echo "found 1"
		printf '%s\n' "$@"
		printf 'reasonhex '
		printf '%s' "$_reason" | od -An -tx1 | tr -d ' \n'
		echo
		cat "$TMP_FRAME.result"
	} >"$TMP_FRAME.out"
	frame R "$TMP_FRAME.out"
	finish
}

finish() { # remove the record and the job's files
	rm -rf "$D"
	rm -f "$TMP_FRAME".*
}

# own PID START: is PID still our (START-started) child?
own() {
	_st=
	IFS= read -r _st 2>/dev/null <"/proc/$1/stat" || return 1
	_rest=${_st##*) }
	# shellcheck disable=SC2086
	set -- "$1" "$2" $_rest
	[ "$4" = "$AGENT" ] && [ "${22}" = "$2" ]
}

start_of() {
	_st=
	IFS= read -r _st 2>/dev/null <"/proc/$1/stat" || { START=; return 1; }
	_rest=${_st##*) }
	# shellcheck disable=SC2086
	set -- $_rest
	START=${20}
}

COOKIE_VAR=TETHER_JOB_ID
SID=

# -- cancel: a job recorded by an earlier agent (out of band) ----------------------

if [ "$OP" = cancel ]; then
	case $ID in *[!0-9a-f]* | '') bail "bad job id" ;; esac
	D=$J/sh-$ID
	M=$D/m
	# One out-of-band cancel of a job at a time (`tether cancel` may race the
	# client that lost its connection); mkdir is the atomic test-and-set. A
	# lock whose holder is gone is taken over.
	LOCK=$J/.sh-lock-$ID
	until mkdir "$LOCK" 2>/dev/null; do
		_h=
		IFS= read -r _h 2>/dev/null <"$LOCK/pid"
		if [ -n "$_h" ] && ! kill -0 "$_h" 2>/dev/null; then
			rm -rf "$LOCK"
			continue
		fi
		sleep "$TICK"
	done
	echo "$AGENT" >"$LOCK/pid"
	trap 'rm -rf "$LOCK"' EXIT
	if [ ! -f "$D/record" ]; then
		say R "found 0" "$TMP_FRAME.result"
		rm -f "$TMP_FRAME".*
		exit 0
	fi
	while read -r _k _a _b; do
		case $_k in
		sid) SID=$_a ;;
		leader) LEADER=$_a ;;
		start) JOB_START=$_a ;;
		agent) OLD_AGENT=$_a OLD_START=$_b ;;
		esac
	done <"$D/record"
	[ -n "$STEPS" ] || STEPS=$(sed -n 's/^steps //p' "$D/record")
	if start_of "$OLD_AGENT" && [ "$START" = "$OLD_START" ]; then
		# The old agent's helpers (control reader, timer, output pumps, the
		# leader's runner), then the agent itself: a live one would race this
		# termination. Its children are never members (the leader's parent is
		# the runner).
		for _d in /proc/[0-9]*; do
			_st=
			IFS= read -r _st 2>/dev/null <"$_d/stat" || continue
			_rest=${_st##*) }
			# shellcheck disable=SC2086
			set -- $_rest
			[ "$2" = "$OLD_AGENT" ] && kill -s KILL "${_d#/proc/}" 2>/dev/null
		done
		kill -s KILL "$OLD_AGENT" 2>/dev/null
		rm -f "$J/.sh-$OLD_AGENT".*
		NOTES="supervisor pid $OLD_AGENT stopped (SIGKILL)"
	else
		rm -f "$J/.sh-$OLD_AGENT".*
		NOTES="supervisor pid $OLD_AGENT already gone"
	fi
	terminate
	send_result "${REASON_IN:-cancelled out of band over a new connection}" "note $NOTES"
	exit 0
fi
[ "$OP" = run ] || bail "unknown operation"

# -- run ------------------------------------------------------------------------

ID=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
case $ID in *[!0-9a-f]* | '') bail "cannot read /dev/urandom" ;; esac
D=$J/sh-$ID
M=$D/m
mkdir "$D" "$M" || bail "cannot create $D"
mkfifo "$D/out" "$D/err" "$D/events" || bail "cannot create fifos in $D"
exec 4<>"$D/events"

pump() { # KIND FIFO: the job's output as frames (chunks <= PIPE_BUF)
	while :; do
		dd bs=4000 count=1 of="$2.chunk" 2>/dev/null
		[ -s "$2.chunk" ] || break
		frame "$1" "$2.chunk"
	done <"$2"
	rm -f "$2.chunk"
}
pump O "$D/out" 4>&- </dev/null &
pump E "$D/err" 4>&- </dev/null &

SETSID=
command -v setsid >/dev/null 2>&1 && SETSID=setsid
# The runner waits for the leader and reports its status; the leader runs in
# a session of its own, with the cookie and the caller's PATH.
(
	if [ -n "$JOB_PATH" ]; then
		$SETSID env "$COOKIE_VAR=$ID" "PATH=$JOB_PATH" "$@" </dev/null >"$D/out" 2>"$D/err" 4>&- &
	else
		$SETSID env "$COOKIE_VAR=$ID" "$@" </dev/null >"$D/out" 2>"$D/err" 4>&- &
	fi
	_l=$!
	echo "leader $_l" >&4
	wait "$_l"
	echo "exit $?" >&4
) </dev/null &
RUNNER=$!
start_of "$RUNNER"
RUNNER_START=$START

IFS=' ' read -r _ev LEADER <&4
start_of "$LEADER" || START=0
JOB_START=$START
LEADER_START=$START
[ -n "$SETSID" ] && SID=$LEADER
start_of "$AGENT"
{
	echo "sid $SID"
	echo "leader $LEADER $LEADER_START"
	echo "start $JOB_START"
	echo "agent $AGENT $START"
	echo "steps $STEPS"
} >"$D/record.tmp" && mv "$D/record.tmp" "$D/record"

if [ -n "$SID" ]; then
	_trk='["session",true,"setsid: the job has a session and process group of its own"]'
else
	_trk='["session",false,"no setsid command on this host"]'
fi
say J "{\"job_id\":\"$ID\",\"leader\":[$LEADER,$LEADER_START],\"engine\":\"sh\",\"trackers\":[$_trk,[\"cookie\",true,\"TETHER_JOB_ID in /proc/PID/environ\"],[\"walk\",true,\"children of known members\"],[\"cgroup\",false,\"not available to the shell agent\"],[\"subreaper\",false,\"not available to the shell agent\"]]}" "$TMP_FRAME.started"

# Control lines: each "cancel" is acknowledged and reported; EOF is the dead
# man's switch (connection lost, local tether killed).
exec 3<&0
(
	_n=0
	while IFS= read -r _line; do
		case $_line in
		cancel*)
			_n=$((_n + 1))
			true >"$D/cancel.$_n"
			say A "{\"cancels\":$_n}" "$TMP_FRAME.ack"
			printf 'cancel %s\n' "${_line#cancel }" >&4 # echo would decode the escapes
			;;
		esac
	done
	true >"$D/eof"
	echo eof >&4
) <&3 &
READER=$!
exec 3<&- </dev/null
start_of "$READER"
READER_START=$START

TIMER=
if [ "$TIMEOUT" != - ]; then
	# In steps of at most a second, so the timer outlives the agent by no more.
	(
		_left=$TIMEOUT
		while [ "$_left" -gt 0 ] && kill -0 "$AGENT" 2>/dev/null; do
			if [ "$_left" -ge 1000 ]; then
				sleep 1
				_left=$((_left - 1000))
			else
				sleep "0.$(printf %03d "$_left")" 2>/dev/null || sleep 1
				_left=0
			fi
		done
		[ "$_left" -gt 0 ] || echo timeout >&4
	) </dev/null >/dev/null 2>&1 &
	TIMER=$!
	start_of "$TIMER"
	TIMER_START=$START
fi

trap 'echo signal >&4' INT TERM HUP QUIT

LEADER_STATUS=-
TIMED_OUT=0
REASON=
CANCELS_BEFORE=1
while IFS=' ' read -r _ev _arg <&4; do
	case $_ev in
	exit) LEADER_STATUS=$_arg; REASON="leftovers after the leader exited"; break ;;
	cancel) dec "$_arg" && REASON=$_v; REASON=${REASON:-cancelled by the client}; CANCELS_BEFORE=2; break ;;
	eof) REASON="control connection closed (dead man's switch)"; break ;;
	timeout) TIMED_OUT=1; REASON=timeout; break ;;
	signal) REASON="remote agent received a signal"; break ;;
	esac
done

terminate "$CANCELS_BEFORE"

# The output pumps end when the last writer (a member) is gone; a survivor
# may hold one open, so only wait for them when the tree is empty.
if [ -z "$ALIVE" ]; then
	# The leader is gone, so its runner reports its status (after any
	# events still queued).
	while [ "$LEADER_STATUS" = - ] && IFS=' ' read -r _ev _arg <&4; do
		[ "$_ev" = exit ] && LEADER_STATUS=$_arg
	done
	wait_pumps=1
else
	wait_pumps=0
fi
own "$READER" "$READER_START" && kill "$READER" 2>/dev/null
[ -n "$TIMER" ] && own "$TIMER" "$TIMER_START" && kill "$TIMER" 2>/dev/null
if [ "$wait_pumps" = 1 ]; then
	wait 2>/dev/null # (the shell would print "Terminated" for the helpers)
else
	# The pumps are this shell's children, blocked on a fifo a survivor holds.
	for _d in /proc/[0-9]*; do
		_st=
		IFS= read -r _st 2>/dev/null <"$_d/stat" || continue
		_rest=${_st##*) }
		# shellcheck disable=SC2086
		set -- $_rest
		[ "$2" = "$AGENT" ] && [ "${_d#/proc/}" != "$RUNNER" ] && kill "${_d#/proc/}" 2>/dev/null
	done
fi

send_result "$REASON" "status $LEADER_STATUS" "timed_out $TIMED_OUT"
exit 0
