//! Agent requests built from a policy: what an honest host asks for. The
//! agent checks every one of them against the same policy, so building them
//! from it is how the host gets them right; a dishonest host gets refusals.

use veil_agent_api::resources::{CPU_PERIOD_RANGE, DEFAULT_CPU_PERIOD, MIN_CPU_QUOTA, Resources};
use veil_agent_api::{
    Capabilities, CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, ImageRef,
    Mount, Process, User,
};
use veil_policy::model::{ContainerPolicy, MountRule, PolicyData, Strategy};

/// Guest directory of a sandbox's files.
pub fn sandbox_dir(sandbox_id: &str) -> String {
    format!("/run/veil/sandbox/{sandbox_id}")
}

/// A literal value for an anchored regex that matches exactly one string
/// (`^name$` with escapes), if it is one.
pub fn literal_of(regex: &str) -> Option<String> {
    let inner = regex.strip_prefix('^')?.strip_suffix('$')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// `create_sandbox` for the policy's pod. Content volumes are added by the
/// caller (`volumes`), computed from the pod's YAML with
/// `veil_policy::generate::pod_volume_contents`.
pub fn create_sandbox(data: &PolicyData, sandbox_id: &str, pod_name: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        sandbox_id: sandbox_id.into(),
        hostname: pod_name.into(),
        pod_name: pod_name.into(),
        pod_namespace: data.sandbox.namespace.clone(),
        dns: Vec::new(),
        kernel_modules: Vec::new(),
        sandbox_pidns: data.sandbox.sandbox_pidns,
        volumes: Vec::new(),
        workload_nic: None,
    }
}

/// The pod name the policy admits, when its pattern is a literal.
pub fn pod_name(data: &PolicyData) -> Option<String> {
    literal_of(&data.sandbox.pod_name)
}

/// Whether `name` matches the policy's pod name pattern (what the agent's
/// `create_sandbox` check will decide).
pub fn pod_name_fits(pattern: &str, name: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|re| re.is_match(name))
}

/// A name that fits the policy's pod name pattern, for the patterns
/// `veil policy generate` writes for controllers (`^web-[a-z0-9]{1,10}-[a-z0-9]{5}$`,
/// `^db-[0-9]{1,9}$`, optional groups): literals kept, each class
/// repeated its minimum count (at least 1) with characters taken from
/// `seed`, optional groups left out. `None` if the pattern is anything else.
pub fn fitting_pod_name(pattern: &str, seed: &str) -> Option<String> {
    let inner = pattern.strip_prefix('^')?.strip_suffix('$')?;
    let seed: Vec<u8> = seed.bytes().filter(u8::is_ascii_alphanumeric).collect();
    if seed.is_empty() {
        return None;
    }
    let mut next = 0usize;
    let mut out = String::new();
    let chars: Vec<char> = inner.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                out.push(*chars.get(i + 1)?);
                i += 2;
            }
            '(' => {
                // An optional group `(…)?`: leave it out.
                let close = i + chars[i..].iter().position(|c| *c == ')')?;
                if chars.get(close + 1) != Some(&'?') {
                    return None;
                }
                i = close + 2;
            }
            '[' => {
                let close = i + chars[i..].iter().position(|c| *c == ']')?;
                let class: String = chars[i + 1..close].iter().collect();
                let digits_only = class == "0-9";
                if !digits_only && !class.contains("a-z") {
                    return None;
                }
                i = close + 1;
                let mut count = 1;
                if chars.get(i) == Some(&'{') {
                    let end = i + chars[i..].iter().position(|c| *c == '}')?;
                    let spec: String = chars[i + 1..end].iter().collect();
                    count = spec.split(',').next()?.trim().parse::<usize>().ok()?.max(1);
                    i = end + 1;
                }
                for _ in 0..count {
                    let b = seed[next % seed.len()];
                    next += 1;
                    out.push(if digits_only {
                        char::from(b'0' + b % 10)
                    } else {
                        char::from(b.to_ascii_lowercase())
                    });
                }
            }
            '.' | '*' | '+' | '?' | ')' | ']' | '{' | '}' | '|' | '^' | '$' => return None,
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    pod_name_fits(pattern, &out).then_some(out)
}

fn mount_from(rule: &MountRule, sandbox_id: &str) -> Option<Mount> {
    let source = match rule.destination.as_str() {
        "/etc/hostname" => format!("{}/hostname", sandbox_dir(sandbox_id)),
        "/etc/hosts" => format!("{}/hosts", sandbox_dir(sandbox_id)),
        "/etc/resolv.conf" => format!("{}/resolv.conf", sandbox_dir(sandbox_id)),
        "/proc" | "/dev" | "/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/sys" => {
            literal_of(&rule.source)?
        }
        _ => return None,
    };
    Some(Mount {
        destination: rule.destination.clone(),
        source,
        fs_type: rule.fs_type.clone(),
        options: rule.options.clone(),
    })
}

/// A pod volume mount of the policy, as the request for sandbox
/// `sandbox_id`. The agent prepares the volume as the policy's
/// `sandbox.volumes` declares it: an emptyDir made empty and shared, a
/// content volume (configMap, secret, …) from the files handed in with
/// `create_sandbox` and checked against their digests.
fn volume_mount_from(rule: &MountRule, sandbox_id: &str) -> Option<Mount> {
    let prefix = format!("^{}/volumes/", veil_policy::settings::SANDBOX_DIR_RE);
    let escaped = rule.source.strip_prefix(&prefix)?.strip_suffix('$')?;
    let name = literal_of(&format!("^{escaped}$"))?;
    if rule.fs_type != "bind" || name.contains('/') {
        return None;
    }
    Some(Mount {
        destination: rule.destination.clone(),
        source: format!("{}/volumes/{name}", sandbox_dir(sandbox_id)),
        fs_type: rule.fs_type.clone(),
        options: rule.options.clone(),
    })
}

/// The environment a container's policy pins (exact values), in policy order.
pub fn env_of(c: &ContainerPolicy) -> Vec<String> {
    c.env
        .iter()
        .filter(|e| e.strategy == Strategy::Exact)
        .map(|e| format!("{}={}", e.name, e.value))
        .collect()
}

fn process_of(c: &ContainerPolicy, args: Vec<String>) -> Process {
    Process {
        args,
        env: env_of(c),
        cwd: c.cwd.clone(),
        user: User {
            uid: c.user.uid,
            gid: c.user.gid,
            additional_gids: c.user.additional_gids.clone(),
        },
        capabilities: Capabilities {
            bounding: c.capabilities.bounding.clone(),
            effective: c.capabilities.effective.clone(),
            inheritable: c.capabilities.inheritable.clone(),
            permitted: c.capabilities.permitted.clone(),
            ambient: c.capabilities.ambient.clone(),
        },
        no_new_privileges: c.no_new_privileges,
        terminal: false,
        stdin: false,
        console_size: None,
    }
}

/// `create_container` for the policy's container `c`.
pub fn create_container(
    data: &PolicyData,
    c: &ContainerPolicy,
    sandbox_id: &str,
    container_id: &str,
) -> CreateContainerRequest {
    let mounts = data
        .default_mounts
        .iter()
        .filter_map(|r| mount_from(r, sandbox_id))
        .chain(
            c.mounts
                .iter()
                .filter_map(|r| volume_mount_from(r, sandbox_id)),
        )
        .collect();
    CreateContainerRequest {
        container_id: container_id.into(),
        name: c.name.clone(),
        image: ImageRef {
            reference: c.image.reference.clone(),
            digest: c.image.digest.clone(),
        },
        process: process_of(c, c.args.clone()),
        mounts,
        privileged: c.privileged,
        read_only_rootfs: c.read_only_rootfs,
        sysctls: c.sysctls.clone(),
        devices: Vec::new(),
        ports: crate::net::ports::request_ports(data, c, &[]),
        resources: c.resources.as_ref().map(|p| Box::new(resources_of(p))),
    }
}

/// The limits an honest host asks for under the policy's bounds: the
/// bounds themselves (a CPU bound as a quota over the default period, or
/// over the longest one below 10m, whose quota would be under the kernel's
/// minimum).
pub fn resources_of(p: &veil_policy::model::ResourcePolicy) -> Resources {
    let cpu = p.cpu_millis.map(|m| {
        let period = if m.saturating_mul(DEFAULT_CPU_PERIOD) / 1000 < MIN_CPU_QUOTA {
            *CPU_PERIOD_RANGE.end()
        } else {
            DEFAULT_CPU_PERIOD
        };
        (m.saturating_mul(period) / 1000, period)
    });
    Resources {
        memory_max: p.memory_max,
        cpu_quota: cpu.map(|(q, _)| q),
        cpu_period: cpu.map(|(_, p)| p),
        ..Resources::default()
    }
}

/// The image a host was asked to run (the CRI's image name), as the agent's
/// request names it. A digest in the reference is the one sent; else the
/// digest the policy pins for that image: same repository and tag, or same
/// repository when the policy pins it by digest alone (the guest checks the
/// image it is given against that digest, whatever the host's tag points
/// to). An image the policy does not run is sent without a digest, which
/// the policy refuses with its reason.
pub fn requested_image(data: &PolicyData, reference: &str) -> ImageRef {
    requested_among(data.containers.iter().map(|c| &c.image), reference)
}

fn requested_among<'a>(
    pinned: impl IntoIterator<Item = &'a veil_policy::model::ImagePolicy>,
    reference: &str,
) -> ImageRef {
    let asked = DockerRef::parse(reference);
    let digest = match &asked.digest {
        Some(d) => d.clone(),
        None => pinned
            .into_iter()
            .find(|i| {
                let p = DockerRef::parse(&i.reference);
                p.repository == asked.repository
                    && (p.tag == asked.tag || (p.tag.is_none() && p.digest.is_some()))
            })
            .map(|i| i.digest.clone())
            .unwrap_or_default(),
    };
    ImageRef {
        reference: reference.into(),
        digest,
    }
}

/// A Docker reference split and normalized as containerd and
/// containers/image name images (`busybox` → `docker.io/library/busybox`,
/// tag `latest` when neither a tag nor a digest is given).
#[derive(Debug, PartialEq, Eq)]
struct DockerRef {
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl DockerRef {
    fn parse(reference: &str) -> Self {
        let (name, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (reference, None),
        };
        // A tag is after the last '/' (a registry port is before it).
        let (name, tag) = match name.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (name, None),
        };
        let tag = tag.or_else(|| digest.is_none().then(|| "latest".to_string()));
        let repository = match name.split_once('/') {
            None => format!("docker.io/library/{name}"),
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if first == "docker.io" && !rest.contains('/') {
                    format!("docker.io/library/{rest}")
                } else {
                    name.to_string()
                }
            }
            Some(_) => format!("docker.io/{name}"),
        };
        DockerRef {
            repository,
            tag,
            digest,
        }
    }
}

/// `exec_process` of `args` in a container created from `c`.
pub fn exec_process(
    c: &ContainerPolicy,
    container_id: &str,
    exec_id: &str,
    args: Vec<String>,
) -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        process: process_of(c, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalize_as_containerd_names_images() {
        let r = |s: &str| {
            let d = DockerRef::parse(s);
            (d.repository, d.tag, d.digest)
        };
        let some = |s: &str| Some(s.to_string());
        for (given, repo, tag, digest) in [
            ("busybox", "docker.io/library/busybox", some("latest"), None),
            (
                "busybox:1.36",
                "docker.io/library/busybox",
                some("1.36"),
                None,
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox",
                some("latest"),
                None,
            ),
            (
                "library/busybox",
                "docker.io/library/busybox",
                some("latest"),
                None,
            ),
            ("reg.test/a/b:1", "reg.test/a/b", some("1"), None),
            (
                "localhost:5000/app",
                "localhost:5000/app",
                some("latest"),
                None,
            ),
            (
                "app@sha256:ab",
                "docker.io/library/app",
                None,
                some("sha256:ab"),
            ),
            (
                "r.io/app:1@sha256:ab",
                "r.io/app",
                some("1"),
                some("sha256:ab"),
            ),
        ] {
            assert_eq!(r(given), (repo.to_string(), tag, digest), "{given}");
        }
    }

    #[test]
    fn requested_images_take_the_policys_digest_for_its_own_images_only() {
        let d = |c: &str| format!("sha256:{}", c.repeat(64));
        let images = [
            veil_policy::model::ImagePolicy {
                reference: "reg.test/app:1".into(),
                digest: d("a"),
            },
            veil_policy::model::ImagePolicy {
                reference: format!("web@{}", d("c")),
                digest: d("c"),
            },
        ];
        let digest = |r: &str| requested_among(&images, r).digest;
        assert_eq!(digest("reg.test/app:1"), d("a"));
        assert_eq!(digest("reg.test/app:2"), "", "another tag");
        assert_eq!(digest("reg.test/other:1"), "", "another repository");
        assert_eq!(digest(&format!("reg.test/app:1@{}", d("b"))), d("b"));
        // Pinned by digest alone: whatever tag the kubelet's image has.
        assert_eq!(digest("docker.io/library/web:3"), d("c"));
        assert_eq!(
            requested_among(&images, "reg.test/app:2").reference,
            "reg.test/app:2"
        );
    }

    #[test]
    fn literals_of_exact_regexes() {
        assert_eq!(
            literal_of("^hello\\-world$").as_deref(),
            Some("hello-world")
        );
        assert_eq!(literal_of("^proc$").as_deref(), Some("proc"));
        assert_eq!(literal_of("^a.*$"), None);
        assert_eq!(literal_of("abc"), None);
        let re = veil_policy::model::exact_regex("my.pod-1");
        assert_eq!(literal_of(&re).as_deref(), Some("my.pod-1"));
    }

    #[test]
    fn pod_volume_mounts_are_requested_from_this_sandbox_only() {
        let rule = |source: String| MountRule {
            destination: "/data".into(),
            fs_type: "bind".into(),
            source,
            options: vec!["rbind".into(), "rprivate".into(), "rw".into()],
        };
        let re = veil_policy::settings::SANDBOX_DIR_RE;
        let m = volume_mount_from(&rule(format!("^{re}/volumes/my\\-data$")), "sb1").unwrap();
        assert_eq!(m.source, "/run/veil/sandbox/sb1/volumes/my-data");
        assert_eq!(m.destination, "/data");
        assert!(volume_mount_from(&rule(format!("^{re}/serviceaccount$")), "sb1").is_none());
        assert!(volume_mount_from(&rule(format!("^{re}/volumes/a/[^/]+$")), "sb1").is_none());
    }

    #[test]
    fn names_made_to_fit_controller_patterns() {
        for (re, shape) in [
            ("^web\\-[a-z0-9]{1,10}\\-[a-z0-9]{5}$", "web-5-e0c2a"),
            ("^db\\-[0-9]{1,9}$", "db-3"),
            ("^job(-[0-9]{1,9})?-[a-z0-9]{5}$", "job-5e0c2"),
        ] {
            let n = fitting_pod_name(re, "5e0c2a91b7d4").unwrap();
            assert_eq!(n, shape, "{re}");
            assert!(pod_name_fits(re, &n));
        }
        assert!(!pod_name_fits(
            "^web\\-[a-z0-9]{1,10}\\-[a-z0-9]{5}$",
            "web"
        ));
        assert_eq!(fitting_pod_name("^a|b$", "123"), None);
    }
}
