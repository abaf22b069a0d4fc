//! Agent requests built from a policy: what an honest host asks for. The
//! agent checks every one of them against the same policy, so building them
//! from it is how the host gets them right; a dishonest host gets refusals.

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

/// `create_sandbox` for the policy's pod.
pub fn create_sandbox(data: &PolicyData, sandbox_id: &str, pod_name: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        sandbox_id: sandbox_id.into(),
        hostname: pod_name.into(),
        pod_name: pod_name.into(),
        pod_namespace: data.sandbox.namespace.clone(),
        dns: Vec::new(),
        kernel_modules: Vec::new(),
        sandbox_pidns: data.sandbox.sandbox_pidns,
    }
}

/// The pod name the policy admits, when its pattern is a literal.
pub fn pod_name(data: &PolicyData) -> Option<String> {
    literal_of(&data.sandbox.pod_name)
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
        sysctls: Default::default(),
        devices: Vec::new(),
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
}
