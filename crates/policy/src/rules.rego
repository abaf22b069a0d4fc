package agent_policy

# veil agent policy rules, format version 1.
#
# input = {"api_version": 1, "kind": "<request kind>",
#          "request": <the request JSON, payloads replaced by data_len>,
#          "state": <what the agent has allowed so far>}
# For every request kind K, `K_errors` is the set of violations; the request
# is allowed only when that set is empty. A kind without a rule is denied.
# The policy data follows at the end of this file as `policy_data := {...}`.

import rego.v1

req := input.request

state := input.state

containers_by_name[c.name] := c if {
	some c in policy_data.containers
}

violation(rule, field, expected, actual, message) := {
	"rule": rule,
	"field": field,
	"expected": expected,
	"actual": actual,
	"message": message,
}

# ---------------------------------------------------------------- helpers

env_name(kv) := substring(kv, 0, indexof(kv, "="))

env_value(kv) := substring(kv, indexof(kv, "=") + 1, -1)

container_env_names(c) := {r.name | some r in c.env}

env_rule_text(r) := sprintf("%s=%s", [r.name, r.value]) if r.strategy == "exact"

env_rule_text(r) := sprintf("%s=~%s", [r.name, r.value]) if r.strategy == "regex"

value_matches(r, v) if {
	r.strategy == "exact"
	r.value == v
}

value_matches(r, v) if {
	r.strategy == "regex"
	regex.match(r.value, v)
}

# The request's environment split once per evaluation (rules are computed
# once per query; functions are not memoized).
req_env := [{"i": i, "kv": kv, "name": env_name(kv), "value": env_value(kv)} |
	some i, kv in req.process.env
]

req_env_names := {e.name | some e in req_env}

env_allowed(c, names, e) if {
	some r in c.env
	r.name == e.name
	value_matches(r, e.value)
}

# Platform-injected variables never match a name the container defines.
env_allowed(c, names, e) if {
	not e.name in names
	some r in policy_data.platform_env
	regex.match(r.name, e.name)
	regex.match(r.value, e.value)
}

env_expected(c, names, e) := concat(", ", sort([env_rule_text(r) | some r in c.env; r.name == e.name])) if {
	e.name in names
} else := sprintf("no variable %s (container variables: %s; platform variables: %s)", [
	e.name,
	concat(", ", sort(names)),
	concat(", ", sort([r.name | some r in policy_data.platform_env])),
])

# Violations of the request's process.env for container c.
env_errors(rule, c) := unmatched | duplicated if {
	names := container_env_names(c)
	unmatched := {v |
		some e in req_env
		not env_allowed(c, names, e)
		expected := env_expected(c, names, e)
		v := violation(rule, sprintf("process.env[%d]", [e.i]), expected, e.kv, sprintf(
			"%s: env %q matches no rule for container %q; allowed: %s",
			[rule, e.kv, c.name, expected],
		))
	}
	duplicated := {v |
		# Pairs are compared only when some name repeats.
		count(req_env_names) != count(req_env)
		some a in req_env
		some b in req_env
		a.i < b.i
		a.name == b.name
		v := violation(rule, sprintf("process.env[%d]", [b.i]), "each variable once", b.kv, sprintf(
			"%s: env variable %s is set twice for container %q (%q and %q)",
			[rule, a.name, c.name, a.kv, b.kv],
		))
	}
}

# Variables the policy requires (e.g. from a configMap or secret) must be
# present in every process of the container: its own and every exec.
required_env_errors(rule, c) := {v |
	some r in c.env
	r.required
	not r.name in req_env_names
	v := violation(rule, "process.env", env_rule_text(r), "absent", sprintf(
		"%s: required env %s is missing for container %q; expected %s",
		[rule, r.name, c.name, env_rule_text(r)],
	))
}

cap_sets := ["bounding", "effective", "inheritable", "permitted", "ambient"]

cap_errors(rule, c, caps) := {v |
	some set in cap_sets
	some cap in object.get(caps, set, [])
	not cap in c.capabilities[set]
	allowed := concat(", ", c.capabilities[set])
	v := violation(rule, sprintf("process.capabilities.%s", [set]), allowed, cap, sprintf(
		"%s: capability %s in the %s set is not allowed for container %q; allowed: [%s]",
		[rule, cap, set, c.name, allowed],
	))
}

user_errors(rule, c, user) := (uid | gid) | groups if {
	uid := {v |
		user.uid != c.user.uid
		v := violation(rule, "process.user.uid", sprintf("%d", [c.user.uid]), sprintf("%d", [user.uid]), sprintf(
			"%s: uid %d does not match the policy for container %q; expected %d",
			[rule, user.uid, c.name, c.user.uid],
		))
	}
	gid := {v |
		user.gid != c.user.gid
		v := violation(rule, "process.user.gid", sprintf("%d", [c.user.gid]), sprintf("%d", [user.gid]), sprintf(
			"%s: gid %d does not match the policy for container %q; expected %d",
			[rule, user.gid, c.name, c.user.gid],
		))
	}
	groups := {v |
		actual_groups := sort(object.get(user, "additional_gids", []))
		actual_groups != c.user.additional_gids
		expected := json.marshal(c.user.additional_gids)
		actual := json.marshal(actual_groups)
		v := violation(rule, "process.user.additional_gids", expected, actual, sprintf(
			"%s: additional gids %s do not match the policy for container %q; expected %s",
			[rule, actual, c.name, expected],
		))
	}
}

nnp_errors(rule, c, process) := {v |
	c.no_new_privileges
	not process.no_new_privileges
	v := violation(rule, "process.no_new_privileges", "true", "false", sprintf(
		"%s: container %q must run with no_new_privileges",
		[rule, c.name],
	))
}

mount_text(m) := sprintf("%s %s %s (%s)", [m.destination, m.type, m.source, concat(",", sort(m.options))])

# One pass over the container's and the default mount rules (inlined: a
# function call per candidate rule costs more than the comparisons).
mount_allowed(c, m) if {
	some r in array.concat(c.mounts, policy_data.default_mounts)
	r.destination == m.destination
	r.type == m.type
	sort(r.options) == sort(m.options)
	regex.match(r.source, m.source)
}

mount_expected(c, dest) := concat(" | ", rules) if {
	rules := [mount_text(r) | some r in array.concat(c.mounts, policy_data.default_mounts); r.destination == dest]
	count(rules) > 0
} else := sprintf("no mount at %s", [dest])

unknown_container(rule) := v if {
	not state.containers[req.container_id]
	v := violation(rule, "container_id", "a container created in this sandbox", req.container_id, sprintf(
		"%s: container_id %q was not created in this sandbox",
		[rule, req.container_id],
	))
}

container_of(cid) := containers_by_name[state.containers[cid].name]

unknown_exec(rule) := v if {
	req.exec_id != ""
	state.containers[req.container_id]
	not state.containers[req.container_id].execs[req.exec_id]
	v := violation(rule, "exec_id", "an exec process allowed in this container", req.exec_id, sprintf(
		"%s: exec_id %q was not started in container %q",
		[rule, req.exec_id, req.container_id],
	))
}

# ---------------------------------------------------------------- create_sandbox

create_sandbox_errors contains v if {
	state.sandbox_created
	v := violation("create_sandbox", "sandbox_id", "no existing sandbox", req.sandbox_id, "create_sandbox: a sandbox already exists in this guest")
}

create_sandbox_errors contains v if {
	not regex.match(policy_data.sandbox.pod_name, req.pod_name)
	v := violation("create_sandbox", "pod_name", policy_data.sandbox.pod_name, req.pod_name, sprintf(
		"create_sandbox: pod name %q does not match %s",
		[req.pod_name, policy_data.sandbox.pod_name],
	))
}

create_sandbox_errors contains v if {
	req.pod_namespace != policy_data.sandbox.namespace
	v := violation("create_sandbox", "pod_namespace", policy_data.sandbox.namespace, req.pod_namespace, sprintf(
		"create_sandbox: namespace %q does not match the policy; expected %q",
		[req.pod_namespace, policy_data.sandbox.namespace],
	))
}

create_sandbox_errors contains v if {
	some i, m in req.kernel_modules
	not m in policy_data.sandbox.kernel_modules
	allowed := concat(", ", policy_data.sandbox.kernel_modules)
	v := violation("create_sandbox", sprintf("kernel_modules[%d]", [i]), allowed, m, sprintf(
		"create_sandbox: kernel module %q is not allowed; allowed: [%s]",
		[m, allowed],
	))
}

create_sandbox_errors contains v if {
	req.sandbox_pidns != policy_data.sandbox.sandbox_pidns
	v := violation("create_sandbox", "sandbox_pidns", sprintf("%v", [policy_data.sandbox.sandbox_pidns]), sprintf("%v", [req.sandbox_pidns]), sprintf(
		"create_sandbox: sandbox_pidns %v does not match the policy; expected %v",
		[req.sandbox_pidns, policy_data.sandbox.sandbox_pidns],
	))
}

# ---------------------------------------------------------------- create_container

create_container_errors contains v if {
	not state.sandbox_created
	v := violation("create_container", "sandbox", "a created sandbox", "none", "create_container: the sandbox has not been created")
}

create_container_errors contains v if {
	state.containers[req.container_id]
	v := violation("create_container", "container_id", "a new container id", req.container_id, sprintf(
		"create_container: container_id %q already exists",
		[req.container_id],
	))
}

create_container_errors contains v if {
	not containers_by_name[req.name]
	names := concat(", ", sort([c.name | some c in policy_data.containers]))
	v := violation("create_container", "name", names, req.name, sprintf(
		"create_container: container %q is not in the policy; allowed: %s",
		[req.name, names],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	req.image.digest != c.image.digest
	v := violation("create_container", "image.digest", c.image.digest, req.image.digest, sprintf(
		"create_container: image digest %s does not match the policy for container %q; expected %s (%s)",
		[req.image.digest, c.name, c.image.digest, c.image.reference],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	req.process.args != c.args
	expected := json.marshal(c.args)
	actual := json.marshal(req.process.args)
	v := violation("create_container", "process.args", expected, actual, sprintf(
		"create_container: argv %s does not match the policy for container %q; expected %s",
		[actual, c.name, expected],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some v in env_errors("create_container", c)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some v in required_env_errors("create_container", c)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	req.process.cwd != c.cwd
	v := violation("create_container", "process.cwd", c.cwd, req.process.cwd, sprintf(
		"create_container: working directory %q does not match the policy for container %q; expected %q",
		[req.process.cwd, c.name, c.cwd],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some v in user_errors("create_container", c, req.process.user)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some v in cap_errors("create_container", c, req.process.capabilities)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some v in nnp_errors("create_container", c, req.process)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	req.privileged
	not c.privileged
	v := violation("create_container", "privileged", "false", "true", sprintf(
		"create_container: container %q may not run privileged",
		[c.name],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	c.read_only_rootfs
	not req.read_only_rootfs
	v := violation("create_container", "read_only_rootfs", "true", "false", sprintf(
		"create_container: container %q must have a read-only root filesystem",
		[c.name],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some i, m in req.mounts
	not mount_allowed(c, m)
	expected := mount_expected(c, m.destination)
	v := violation("create_container", sprintf("mounts[%d]", [i]), expected, mount_text(m), sprintf(
		"create_container: mount %s is not allowed for container %q; allowed: %s",
		[mount_text(m), c.name, expected],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some k, val in req.sysctls
	object.get(c.sysctls, k, null) != val
	expected := sprintf("%v", [object.get(c.sysctls, k, "unset")])
	v := violation("create_container", sprintf("sysctls.%s", [k]), expected, val, sprintf(
		"create_container: sysctl %s=%s is not allowed for container %q; expected %s",
		[k, val, c.name, expected],
	))
}

# The pod's sysctls are applied, not dropped: each one the policy pins
# must be in the request.
create_container_errors contains v if {
	c := containers_by_name[req.name]
	some k, val in c.sysctls
	object.get(object.get(req, "sysctls", {}), k, null) == null
	v := violation("create_container", sprintf("sysctls.%s", [k]), val, "absent", sprintf(
		"create_container: sysctl %s=%s, which the policy requires for container %q, is missing from the request",
		[k, val, c.name],
	))
}

# Resource limits: the policy's are upper bounds (the pod's
# resources.limits). The host may ask for less (it can starve the sandbox
# anyway), never for more, and never for none.
resource_limit(c, key) := object.get(object.get(c, "resources", {}), key, null)

req_resource(key) := object.get(object.get(req, "resources", {}), key, null)

req_cpu_millis := m if {
	q := req_resource("cpu_quota")
	p := req_resource("cpu_period")
	q != null
	p != null
	m := ceil((q * 1000) / p)
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	lim := resource_limit(c, "memory_max")
	lim != null
	got := req_resource("memory_max")
	not memory_within(got, lim)
	got_text := req_memory_text
	v := violation("create_container", "resources.memory_max", sprintf("at most %d bytes", [lim]), got_text, sprintf(
		"create_container: memory limit %s for container %q exceeds the policy's bound of %d bytes (the pod's resources.limits.memory), or is missing; ask for %d bytes or less",
		[got, c.name, lim, lim],
	))
}

req_memory_text := sprintf("%d bytes", [m]) if {
	m := req_resource("memory_max")
	m != null
} else := "none"

memory_within(got, lim) if {
	got != null
	got <= lim
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	lim := resource_limit(c, "cpu_millis")
	lim != null
	not cpu_within(lim)
	got := req_cpu_text
	v := violation("create_container", "resources.cpu_quota", sprintf("at most %dm", [lim]), got, sprintf(
		"create_container: CPU limit %s (cpu_quota/cpu_period) for container %q exceeds the policy's bound of %dm (the pod's resources.limits.cpu), or is missing; ask for %dm or less",
		[got, c.name, lim, lim],
	))
}

cpu_within(lim) if {
	req_cpu_millis <= lim
}

req_cpu_text := sprintf("%dm", [m]) if {
	m := req_cpu_millis
} else := "none"

create_container_errors contains v if {
	c := containers_by_name[req.name]
	object.get(req.process, "stdin", false)
	not c.allow_stdin
	v := violation("create_container", "process.stdin", "false (allow_stdin = false)", "true", sprintf(
		"create_container: container %q may not keep stdin open (allow_stdin = false; the pod's container needs stdin: true)",
		[c.name],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	object.get(req.process, "terminal", false)
	not object.get(c, "allow_tty", false)
	v := violation("create_container", "process.terminal", "false (allow_tty = false)", "true", sprintf(
		"create_container: container %q may not run on a terminal (allow_tty = false; the pod's container needs tty: true)",
		[c.name],
	))
}

create_container_errors contains v if {
	containers_by_name[req.name]
	some i, d in req.devices
	v := violation("create_container", sprintf("devices[%d]", [i]), "no devices", d, sprintf(
		"create_container: device %s is not allowed for container %q",
		[d, req.name],
	))
}

# ---------------------------------------------------------------- create_container: ports
#
# The request lists the ports the container declares and the host port
# each is published on (0: not published). Each must be one the policy
# declares for this container, published on the host port it pins or not
# at all, and not already a port of another container of the pod.

port_text(p) := sprintf("%d/%s", [p.container_port, p.protocol])

request_port_text(p) := sprintf("%s published on host port %d", [port_text(p), p.host_port]) if {
	p.host_port != 0
} else := sprintf("%s (not published)", [port_text(p)])

port_rule_text(r) := sprintf("%s (host port %d or none)", [port_text(r), r.host_port]) if {
	r.host_port != 0
} else := sprintf("%s (not published)", [port_text(r)])

policy_ports_text(c) := concat(", ", sort([port_rule_text(r) | some r in object.get(c, "ports", [])])) if {
	count(object.get(c, "ports", [])) > 0
} else := "none"

port_declared(c, p) if {
	some r in object.get(c, "ports", [])
	r.container_port == p.container_port
	r.protocol == p.protocol
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some i, p in object.get(req, "ports", [])
	not port_declared(c, p)
	expected := policy_ports_text(c)
	v := violation("create_container", sprintf("ports[%d]", [i]), expected, request_port_text(p), sprintf(
		"create_container: port %s is not declared for container %q by the policy (rule ports of %q: %s)",
		[request_port_text(p), c.name, c.name, expected],
	))
}

create_container_errors contains v if {
	c := containers_by_name[req.name]
	some i, p in object.get(req, "ports", [])
	p.host_port != 0
	some r in object.get(c, "ports", [])
	r.container_port == p.container_port
	r.protocol == p.protocol
	r.host_port != p.host_port
	expected := port_rule_text(r)
	v := violation("create_container", sprintf("ports[%d].host_port", [i]), expected, request_port_text(p), sprintf(
		"create_container: port %s of container %q: the policy (rule ports of %q) allows %s",
		[request_port_text(p), c.name, c.name, expected],
	))
}

create_container_errors contains v if {
	some i, p in object.get(req, "ports", [])
	some cid, s in state.containers
	port_text(p) in object.get(s, "ports", [])
	v := violation("create_container", sprintf("ports[%d]", [i]), "a port no other container of the pod has", port_text(p), sprintf(
		"create_container: port %s already belongs to container %q (%s) of this pod; containers share one network, so a port has one owner",
		[port_text(p), s.name, cid],
	))
}

# ---------------------------------------------------------------- start / remove

start_container_errors contains v if {
	v := unknown_container("start_container")
}

start_container_errors contains v if {
	state.containers[req.container_id].started
	v := violation("start_container", "container_id", "a created, not yet started container", req.container_id, sprintf(
		"start_container: container %q was already started",
		[req.container_id],
	))
}

remove_container_errors contains v if {
	v := unknown_container("remove_container")
}

# ---------------------------------------------------------------- exec_process

exec_process_errors contains v if {
	v := unknown_container("exec_process")
}

exec_process_errors contains v if {
	s := state.containers[req.container_id]
	not s.started
	v := violation("exec_process", "container_id", "a started container", req.container_id, sprintf(
		"exec_process: container %q has not been started",
		[req.container_id],
	))
}

exec_process_errors contains v if {
	s := state.containers[req.container_id]
	s.execs[req.exec_id]
	v := violation("exec_process", "exec_id", "a new exec id", req.exec_id, sprintf(
		"exec_process: exec_id %q already exists in container %q",
		[req.exec_id, req.container_id],
	))
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	not req.process.args in c.exec
	expected := json.marshal(c.exec)
	actual := json.marshal(req.process.args)
	v := violation("exec_process", "process.args", expected, actual, sprintf(
		"exec_process: command %s is not allowed in container %q; allowed: %s",
		[actual, c.name, expected],
	))
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	some v in env_errors("exec_process", c)
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	some v in required_env_errors("exec_process", c)
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	req.process.cwd != c.cwd
	v := violation("exec_process", "process.cwd", c.cwd, req.process.cwd, sprintf(
		"exec_process: working directory %q does not match the policy for container %q; expected %q",
		[req.process.cwd, c.name, c.cwd],
	))
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	some v in user_errors("exec_process", c, req.process.user)
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	some v in cap_errors("exec_process", c, req.process.capabilities)
}

exec_process_errors contains v if {
	c := container_of(req.container_id)
	some v in nnp_errors("exec_process", c, req.process)
}

# ---------------------------------------------------------------- signal_process

signal_process_errors contains v if {
	v := unknown_container("signal_process")
}

signal_process_errors contains v if {
	v := unknown_exec("signal_process")
}

signal_process_errors contains v if {
	c := container_of(req.container_id)
	not req.signal in c.signals
	expected := json.marshal(c.signals)
	v := violation("signal_process", "signal", expected, sprintf("%d", [req.signal]), sprintf(
		"signal_process: signal %d is not allowed for container %q; allowed: %s",
		[req.signal, c.name, expected],
	))
}

# ---------------------------------------------------------------- read_stream / write_stdin

read_stream_errors contains v if {
	v := unknown_container("read_stream")
}

read_stream_errors contains v if {
	v := unknown_exec("read_stream")
}

# An allowed exec's output may always be read: exec without its output is useless.
read_stream_errors contains v if {
	c := container_of(req.container_id)
	req.exec_id == ""
	not c.allow_stdio
	v := violation("read_stream", "container_id", "allow_stdio = true", "allow_stdio = false", sprintf(
		"read_stream: reading %s of container %q is not allowed by the policy (allow_stdio = false)",
		[req.stream, c.name],
	))
}

write_stdin_errors contains v if {
	v := unknown_container("write_stdin")
}

write_stdin_errors contains v if {
	v := unknown_exec("write_stdin")
}

write_stdin_errors contains v if {
	c := container_of(req.container_id)
	req.exec_id == ""
	not c.allow_stdin
	v := violation("write_stdin", "container_id", "allow_stdin = true", "allow_stdin = false", sprintf(
		"write_stdin: writing to stdin of container %q is not allowed by the policy (allow_stdin = false)",
		[c.name],
	))
}

# An allowed exec may have a terminal (`veil exec -t`): its argv is pinned,
# and its output and stdin are the host's anyway.
resize_terminal_errors contains v if {
	v := unknown_container("resize_terminal")
}

resize_terminal_errors contains v if {
	v := unknown_exec("resize_terminal")
}

resize_terminal_errors contains v if {
	c := container_of(req.container_id)
	req.exec_id == ""
	not object.get(c, "allow_tty", false)
	v := violation("resize_terminal", "container_id", "allow_tty = true", "allow_tty = false", sprintf(
		"resize_terminal: container %q has no terminal in the policy (allow_tty = false)",
		[c.name],
	))
}

# ---------------------------------------------------------------- copy_file

copy_path_allowed(p) if {
	some r in policy_data.sandbox.copy_file
	regex.match(r, p)
}

path_traverses(p) if {
	some part in split(p, "/")
	part in {".", ".."}
}

copy_file_errors contains v if {
	not copy_path_allowed(req.path)
	allowed := concat(" | ", policy_data.sandbox.copy_file)
	v := violation("copy_file", "path", allowed, req.path, sprintf(
		"copy_file: path %q is not allowed; allowed: %s",
		[req.path, allowed],
	))
}

copy_file_errors contains v if {
	path_traverses(req.path)
	v := violation("copy_file", "path", "a path without . or .. components", req.path, sprintf(
		"copy_file: path %q contains . or .. components",
		[req.path],
	))
}

copy_file_errors contains v if {
	req.file_type == "symlink"
	t := object.get(req, "symlink_target", "")
	not symlink_target_ok(t)
	v := violation("copy_file", "symlink_target", "a relative target without .. or an allowed path", t, sprintf(
		"copy_file: symlink %q -> %q points outside the allowed paths",
		[req.path, t],
	))
}

symlink_target_ok(t) if {
	not startswith(t, "/")
	t != ""
	not path_traverses(t)
}

symlink_target_ok(t) if {
	startswith(t, "/")
	copy_path_allowed(t)
	not path_traverses(t)
}

# ---------------------------------------------------------------- stats / evidence / config

stats_container_errors contains v if {
	v := unknown_container("stats_container")
}

stats_container_errors contains v if {
	not policy_data.sandbox.allow_stats
	v := violation("stats_container", "", "allow_stats = true", "allow_stats = false", "stats_container: container statistics are not allowed by the policy")
}

get_evidence_errors contains v if {
	not policy_data.sandbox.allow_get_evidence
	v := violation("get_evidence", "", "allow_get_evidence = true", "allow_get_evidence = false", "get_evidence: evidence requests from the host are not allowed by the policy")
}

update_config_errors contains v if {
	key := sprintf("%s/%s", [req.kind, req.name])
	not key in policy_data.sandbox.update_config
	allowed := concat(", ", policy_data.sandbox.update_config)
	v := violation("update_config", "name", allowed, key, sprintf(
		"update_config: updating %s is not allowed; allowed: [%s]",
		[key, allowed],
	))
}

# ---------------------------------------------------------------- bench_volume

# Benchmark-only: formats a blank disk the host announced and measures it
# against a plain one. Only the policy `veil bench volume` generates sets
# sandbox.bench_volume; no workload policy admits it.
bench_volume_errors contains v if {
	not policy_data.sandbox.bench_volume
	v := violation("bench_volume", "sandbox.bench_volume", "true", "false", "bench_volume: refused by policy: sandbox.bench_volume is false (only the policy `veil bench volume` generates admits it)")
}
