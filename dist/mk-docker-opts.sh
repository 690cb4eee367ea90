#!/bin/sh
# mk-docker-opts.sh: turn flanneld's subnet.env into Docker daemon options,
# so that docker0 gets this host's flannel subnet and MTU.
#
# Usage: mk-docker-opts.sh [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY] [-h|-?]
#   -f FILE  flannel env file to read (default /run/flannel/subnet.env)
#   -d FILE  file to write (default /run/docker_opts.env); truncated and
#            rewritten, but only after every check below has passed
#   -i       write the individual DOCKER_OPT_* variables
#   -c       write the combined variable
#   -k KEY   name of the combined variable (default DOCKER_OPTS); the value
#            $KEY already has in the environment is put in front of it
#   -m       leave out the --ip-masq option (for Docker versions without it)
#   -h, -?   print this help and exit 1
# With neither -i nor -c, both are written.
#
# Output layout. Every line is NAME="value" followed by one \n, nothing else
# is written. The individual variables come first, sorted by name, then the
# combined one:
#   DOCKER_OPT_BIP="--bip=<FLANNEL_SUBNET>"
#   DOCKER_OPT_IPMASQ="--ip-masq=<not FLANNEL_IPMASQ>"       (absent with -m)
#   DOCKER_OPT_MTU="--mtu=<FLANNEL_MTU>"
#   <KEY>="<prev> --bip=<FLANNEL_SUBNET> --ip-masq=<not FLANNEL_IPMASQ> --mtu=<FLANNEL_MTU>"
# In the combined value each option is preceded by one space, so it starts
# with a space when $KEY was unset or empty (upstream's format), and <prev>
# is separated from the first option by exactly that space. -m drops
# " --ip-masq=..." from it too. Docker must masquerade only when flanneld
# does not (FLANNEL_IPMASQ=true means flanneld already NATs), hence the
# inverse. In <prev>, \ " $ and ` are backslash-escaped and newlines become
# spaces, so the file reads back the same in sh and in systemd's
# EnvironmentFile=.
#
# Example: with FLANNEL_SUBNET=10.1.74.1/24, FLANNEL_MTU=1472 and
# FLANNEL_IPMASQ=false,
#   mk-docker-opts.sh            writes all four lines:
#     DOCKER_OPT_BIP="--bip=10.1.74.1/24"
#     DOCKER_OPT_IPMASQ="--ip-masq=true"
#     DOCKER_OPT_MTU="--mtu=1472"
#     DOCKER_OPTS=" --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
#   mk-docker-opts.sh -c -m      DOCKER_OPTS=" --bip=10.1.74.1/24 --mtu=1472"
#   DOCKER_NETWORK_OPTIONS=--debug mk-docker-opts.sh -c -k DOCKER_NETWORK_OPTIONS
#                                DOCKER_NETWORK_OPTIONS="--debug --bip=10.1.74.1/24 --ip-masq=true --mtu=1472"
#
# Differences from upstream's script, on purpose:
#   - the env file is parsed (NAME=value lines, optional quotes), never
#     sourced, so it cannot run code; only FLANNEL_SUBNET, FLANNEL_MTU and
#     FLANNEL_IPMASQ are used, and they are validated;
#   - FLANNEL_IPMASQ is not looked at with -m;
#   - if the routing table cannot be read, the route-conflict check is skipped
#     with a warning instead of passing silently.
#
# Route-conflict check: if the main routing table already has a route with a
# gateway ("via") to this host's subnet, Docker's bridge would shadow it, so
# the script exits 1. The table is read with "$MK_DOCKER_OPTS_IP -4 route
# show" (MK_DOCKER_OPTS_IP defaults to ip; tests point it at a fake).
#
# Exit status: 0 on success, 1 on any error (message on stderr).
#
# POSIX sh: runs under dash and bash.

set -eu

prog=mk-docker-opts.sh
nl='
'

usage() {
	cat >&2 <<EOF
Usage: $prog [-f FILE] [-d FILE] [-i] [-c] [-m] [-k KEY] [-h|-?]
Generate Docker daemon options from flannel's subnet.env.

  -f FILE  flannel env file (default /run/flannel/subnet.env)
  -d FILE  output file (default /run/docker_opts.env)
  -i       write individual variables (DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU)
  -c       write the combined variable (DOCKER_OPTS, or KEY with -k)
  -k KEY   name of the combined variable; \$KEY's current value is prepended
  -m       do not output the --ip-masq option
  -h, -?   show this help
With neither -i nor -c, both are written.
EOF
	exit 1
}

die() {
	printf '%s: %s\n' "$prog" "$*" >&2
	exit 1
}

env_file=/run/flannel/subnet.env
dest=/run/docker_opts.env
key=DOCKER_OPTS
indiv=
combined=
nomasq=

while getopts ':f:d:icmk:h' opt; do
	case $opt in
	f) env_file=$OPTARG ;;
	d) dest=$OPTARG ;;
	i) indiv=1 ;;
	c) combined=1 ;;
	m) nomasq=1 ;;
	k) key=$OPTARG ;;
	h) usage ;;
	:) printf '%s: option -%s needs an argument\n' "$prog" "$OPTARG" >&2; usage ;;
	*)
		# -? lands here too: getopts reports it like any unknown option.
		[ "$OPTARG" = '?' ] || printf '%s: unknown option -%s\n' "$prog" "$OPTARG" >&2
		usage
		;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || { printf '%s: unexpected argument %s\n' "$prog" "$1" >&2; usage; }

if [ -z "$indiv" ] && [ -z "$combined" ]; then
	indiv=1
	combined=1
fi

# The name is eval'ed below, so it must be a plain variable name.
case $key in
'' | [!A-Za-z_]* | *[!A-Za-z0-9_]*) die "-k $key: not a valid variable name" ;;
esac

if ! [ -f "$env_file" ] || ! [ -r "$env_file" ]; then
	die "cannot read flannel env file $env_file (is flanneld running? use -f to name another file)"
fi

# unquote VALUE: strip one pair of matching surrounding quotes.
unquote() {
	case $1 in
	\"*\" | \'*\')
		v=${1#?}
		printf '%s' "${v%?}"
		return
		;;
	esac
	printf '%s' "$1"
}

subnet=
mtu=
ipmasq=
have_subnet=
have_ipmasq=
cr=$(printf '\r')
while IFS= read -r line || [ -n "$line" ]; do
	line=${line%"$cr"}
	case $line in
	'' | '#'*) continue ;;
	*=*) ;;
	*) continue ;;
	esac
	name=${line%%=*}
	name=${name#export }
	value=$(unquote "${line#*=}")
	case $name in
	FLANNEL_SUBNET) subnet=$value have_subnet=1 ;;
	FLANNEL_MTU) mtu=$value ;;
	FLANNEL_IPMASQ) ipmasq=$value have_ipmasq=1 ;;
	esac
done <"$env_file"

[ -n "$have_subnet" ] ||
	die "no FLANNEL_SUBNET in $env_file (Docker's --bip needs an IPv4 subnet; IPv6-only flannel networks are not supported)"

# parse_subnet CIDR: check that CIDR is a.b.c.d/len and set net_addr to the
# network address and net_len to len.
parse_subnet() {
	case $1 in
	*/*) ;;
	*) return 1 ;;
	esac
	_addr=${1%/*}
	net_len=${1#*/}
	case $_addr in '' | *[!0-9.]*) return 1 ;; esac
	# No leading zeros: $(( 010 )) is octal.
	case $net_len in '' | *[!0-9]* | 0?*) return 1 ;; esac
	[ "$net_len" -le 32 ] || return 1
	_ifs=$IFS
	IFS=.
	# shellcheck disable=SC2086 # splitting on dots is the point
	set -- $_addr
	IFS=$_ifs
	[ $# -eq 4 ] || return 1
	for _o; do
		case $_o in '' | *[!0-9]* | 0?*) return 1 ;; esac
		[ "$_o" -le 255 ] || return 1
	done
	_ip=$((($1 << 24) | ($2 << 16) | ($3 << 8) | $4))
	if [ "$net_len" -eq 0 ]; then
		_mask=0
	else
		_mask=$(((4294967295 << (32 - net_len)) & 4294967295))
	fi
	_net=$((_ip & _mask))
	net_addr=$(((_net >> 24) & 255)).$(((_net >> 16) & 255)).$(((_net >> 8) & 255)).$((_net & 255))
}

parse_subnet "$subnet" ||
	die "FLANNEL_SUBNET=\"$subnet\" in $env_file is not an IPv4 address with a prefix length (like 10.1.74.1/24)"

case $mtu in
'' | *[!0-9]* | 0*) die "FLANNEL_MTU=\"$mtu\" in $env_file is not a positive number" ;;
esac

if [ -z "$nomasq" ]; then
	case $ipmasq in
	true) docker_masq=false ;;
	false) docker_masq=true ;;
	*)
		[ -n "$have_ipmasq" ] || ipmasq="(missing)"
		die "FLANNEL_IPMASQ must be true or false, got \"$ipmasq\" in $env_file (use -m to leave --ip-masq out)"
		;;
	esac
fi

# Route-conflict check. A multipath route prints its gateways on indented
# "nexthop via ..." lines under the destination line.
ip_cmd=${MK_DOCKER_OPTS_IP:-ip}
if routes=$("$ip_cmd" -4 route show); then
	want=$net_addr/$net_len
	want_host=$want
	# ip(8) prints a /32 destination without its length.
	[ "$net_len" -ne 32 ] || want_host=$net_addr
	dst=
	while IFS= read -r line; do
		case $line in
		' '* | '	'*) shown="$dst ${line#"${line%%[! 	]*}"}" ;;
		*) dst=${line%%[ 	]*} shown=$line ;;
		esac
		if [ "$dst" = "$want" ] || [ "$dst" = "$want_host" ]; then
			case " $line " in
			*[\ \	]via[\ \	]*)
				die "Your routing table already contains the subnet $want (route: $shown); Docker's bridge for $subnet would conflict with it"
				;;
			esac
		fi
	done <<EOF
$routes
EOF
else
	printf '%s: warning: cannot read the routing table with "%s -4 route show"; skipping the route-conflict check\n' "$prog" "$ip_cmd" >&2
fi

out=
if [ -n "$indiv" ]; then
	out="${out}DOCKER_OPT_BIP=\"--bip=$subnet\"$nl"
	[ -n "$nomasq" ] || out="${out}DOCKER_OPT_IPMASQ=\"--ip-masq=$docker_masq\"$nl"
	out="${out}DOCKER_OPT_MTU=\"--mtu=$mtu\"$nl"
fi
if [ -n "$combined" ]; then
	eval "prev=\${$key-}"
	case $prev in
	*[\\\"\$\`"$nl"]*)
		prev=$(printf '%sx' "$prev" | tr '\n' ' ' | sed 's/[\\"$`]/\\&/g')
		prev=${prev%x}
		;;
	esac
	opts="$prev --bip=$subnet"
	[ -n "$nomasq" ] || opts="$opts --ip-masq=$docker_masq"
	opts="$opts --mtu=$mtu"
	out="${out}$key=\"$opts\"$nl"
fi

printf '%s' "$out" >"$dest" || die "cannot write $dest"
