//! NVML as a [`GpuTransport`] (feature `nvml`, off by default): loads the
//! driver's `libnvidia-ml.so.1` at run time and calls the documented
//! confidential-computing functions, with every answer bounded and checked
//! before [`crate::nvidia::collect`] checks it again.
//!
//! The library is loaded from one name fixed at build time ([`LIBRARY`]:
//! `libnvidia-ml.so.1`, resolved by the guest's own dynamic loader from its
//! measured image, or an absolute path given as `VEIL_NVML_LIBRARY` when the
//! agent is built); nothing at run time chooses another library. Functions
//! used (NVML API reference, "Confidential Computing" and "Device Queries"):
//! `nvmlInit_v2`, `nvmlShutdown`, `nvmlErrorString`,
//! `nvmlSystemGetConfComputeState`, `nvmlDeviceGetCount_v2`,
//! `nvmlDeviceGetHandleByIndex_v2`, `nvmlDeviceGetUUID`,
//! `nvmlDeviceGetConfComputeGpuAttestationReport`,
//! `nvmlDeviceGetConfComputeGpuCertificate`. The structures are nvml.h's
//! (`nvmlConfComputeSystemState_t`, `nvmlConfComputeGpuAttestationReport_t`,
//! `nvmlConfComputeGpuCertificate_t`), spelled out below.

use std::ffi::{c_char, c_int, c_uint, c_void};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW, Symbol};

use crate::TeeError;
use crate::nvidia::{GpuTransport, MAX_GPUS};

/// The library loaded: fixed when the agent is built.
pub const LIBRARY: &str = match option_env!("VEIL_NVML_LIBRARY") {
    Some(p) => p,
    None => "libnvidia-ml.so.1",
};

/// `NVML_DEVICE_UUID_V2_BUFFER_SIZE`.
const UUID_BUFFER: usize = 96;
/// `NVML_GPU_CERT_CHAIN_SIZE`.
const CERT_CHAIN_SIZE: usize = 0x1000;
/// `NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE`.
const ATTESTATION_CERT_CHAIN_SIZE: usize = 0x1400;
/// `NVML_CC_GPU_CEC_NONCE_SIZE`.
const NONCE_SIZE: usize = 0x20;
/// `NVML_CC_GPU_ATTESTATION_REPORT_SIZE`.
const ATTESTATION_REPORT_SIZE: usize = 0x2000;
/// `NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE`.
const CEC_ATTESTATION_REPORT_SIZE: usize = 0x1000;
/// Most bytes of an `nvmlErrorString` message read.
const MAX_ERROR_STRING: usize = 256;

type NvmlReturn = c_int;
type Device = *mut c_void;

/// `nvmlConfComputeSystemState_t`.
#[allow(dead_code)] // every field is part of the C layout; not all are read
#[repr(C)]
#[derive(Default)]
struct SystemState {
    environment: c_uint,
    cc_feature: c_uint,
    dev_tools_mode: c_uint,
}

/// `nvmlConfComputeGpuCertificate_t`.
#[allow(dead_code)] // every field is part of the C layout; not all are read
#[repr(C)]
struct GpuCertificate {
    cert_chain_size: c_uint,
    attestation_cert_chain_size: c_uint,
    cert_chain: [u8; CERT_CHAIN_SIZE],
    attestation_cert_chain: [u8; ATTESTATION_CERT_CHAIN_SIZE],
}

/// `nvmlConfComputeGpuAttestationReport_t`.
#[allow(dead_code)] // every field is part of the C layout; not all are read
#[repr(C)]
struct GpuAttestationReport {
    is_cec_attestation_report_present: c_uint,
    attestation_report_size: c_uint,
    cec_attestation_report_size: c_uint,
    nonce: [u8; NONCE_SIZE],
    attestation_report: [u8; ATTESTATION_REPORT_SIZE],
    cec_attestation_report: [u8; CEC_ATTESTATION_REPORT_SIZE],
}

struct Fns {
    shutdown: unsafe extern "C" fn() -> NvmlReturn,
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    cc_state: unsafe extern "C" fn(*mut SystemState) -> NvmlReturn,
    count: unsafe extern "C" fn(*mut c_uint) -> NvmlReturn,
    handle: unsafe extern "C" fn(c_uint, *mut Device) -> NvmlReturn,
    uuid: unsafe extern "C" fn(Device, *mut c_char, c_uint) -> NvmlReturn,
    report: unsafe extern "C" fn(Device, *mut GpuAttestationReport) -> NvmlReturn,
    certificate: unsafe extern "C" fn(Device, *mut GpuCertificate) -> NvmlReturn,
}

/// NVML, loaded and initialized; shut down on drop.
pub struct Nvml {
    fns: Fns,
    // Keeps the code the function pointers point into mapped; dropped last.
    _lib: Library,
}

fn load_error(what: String) -> TeeError {
    TeeError::Check {
        check: "nvidia.nvml",
        expected: format!(
            "the NVIDIA driver's NVML library ({LIBRARY}) in the guest image, exporting the confidential-computing API (driver >= 535)"
        ),
        actual: what,
    }
}

/// A symbol as a plain function pointer of type `T`.
///
/// # Safety
/// `T` must be the symbol's C signature.
unsafe fn sym<T: Copy>(lib: &Library, name: &str) -> Result<T, TeeError> {
    let cname = format!("{name}\0");
    // SAFETY: the caller states `T` is the function's signature (nvml.h).
    let s: Symbol<T> = unsafe { lib.get(cname.as_bytes()) }
        .map_err(|e| load_error(format!("{name} missing: {e}")))?;
    Ok(*s)
}

impl Nvml {
    /// Load [`LIBRARY`] and initialize NVML (`nvmlInit_v2`).
    pub fn open() -> Result<Self, TeeError> {
        Self::open_library(LIBRARY)
    }

    /// Load NVML from `path` (tests: the driver's test double).
    #[cfg(test)]
    pub(crate) fn open_at(path: &std::path::Path) -> Result<Self, TeeError> {
        Self::open_library(path.as_os_str())
    }

    fn open_library(path: impl AsRef<std::ffi::OsStr>) -> Result<Self, TeeError> {
        let path = path.as_ref();
        // SAFETY: loading runs the library's initializers; the library is
        // the driver's NVML from the guest's measured image (or the test
        // double), not something the host chose.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| load_error(format!("cannot load {}: {e}", path.to_string_lossy())))?;
        // SAFETY: each signature is nvml.h's for that name.
        let (init, fns) = unsafe {
            let init: unsafe extern "C" fn() -> NvmlReturn = sym(&lib, "nvmlInit_v2")?;
            let fns = Fns {
                shutdown: sym(&lib, "nvmlShutdown")?,
                error_string: sym(&lib, "nvmlErrorString")?,
                cc_state: sym(&lib, "nvmlSystemGetConfComputeState")?,
                count: sym(&lib, "nvmlDeviceGetCount_v2")?,
                handle: sym(&lib, "nvmlDeviceGetHandleByIndex_v2")?,
                uuid: sym(&lib, "nvmlDeviceGetUUID")?,
                report: sym(&lib, "nvmlDeviceGetConfComputeGpuAttestationReport")?,
                certificate: sym(&lib, "nvmlDeviceGetConfComputeGpuCertificate")?,
            };
            (init, fns)
        };
        // SAFETY: no arguments.
        let rc = unsafe { init() };
        if rc != 0 {
            // Not initialized: no Nvml, so nothing to shut down.
            return Err(failed(fns.error_string, "nvmlInit_v2", rc));
        }
        Ok(Nvml { fns, _lib: lib })
    }

    fn failed(&self, call: &str, rc: NvmlReturn) -> TeeError {
        failed(self.fns.error_string, call, rc)
    }

    fn device(&self, index: u32) -> Result<Device, TeeError> {
        let mut d: Device = std::ptr::null_mut();
        // SAFETY: `d` is a valid out-pointer.
        let rc = unsafe { (self.fns.handle)(index, &mut d) };
        if rc != 0 {
            return Err(self.failed("nvmlDeviceGetHandleByIndex_v2", rc));
        }
        Ok(d)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: NVML was initialized in `open_library`.
        unsafe { (self.fns.shutdown)() };
    }
}

/// The refusal for NVML function `call` returning `rc`, with NVML's own
/// message (bounded, control characters replaced).
fn failed(
    error_string: unsafe extern "C" fn(NvmlReturn) -> *const c_char,
    call: &str,
    rc: NvmlReturn,
) -> TeeError {
    // SAFETY: nvmlErrorString takes any code and returns a static
    // NUL-terminated string, or NULL; read at most MAX_ERROR_STRING bytes.
    let msg = unsafe {
        let p = error_string(rc);
        let mut out = String::new();
        if !p.is_null() {
            for i in 0..MAX_ERROR_STRING {
                let b = *p.add(i) as u8;
                if b == 0 {
                    break;
                }
                out.push(if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '?'
                });
            }
        }
        out
    };
    TeeError::Check {
        check: "nvidia.nvml",
        expected: format!("{call} to return NVML_SUCCESS"),
        actual: format!("error {rc} ({msg})"),
    }
}

/// `buf[..size]`, refusing a size past the buffer (the library must not
/// claim more bytes than NVML's structure holds).
fn bounded(what: &str, buf: &[u8], size: c_uint) -> Result<Vec<u8>, TeeError> {
    let n = size as usize;
    if n == 0 || n > buf.len() {
        return Err(TeeError::malformed(
            what.to_string(),
            format!("NVML says {n} bytes, expected 1..={}", buf.len()),
        ));
    }
    Ok(buf[..n].to_vec())
}

impl GpuTransport for Nvml {
    fn cc_enabled(&self) -> Result<bool, TeeError> {
        let mut s = SystemState::default();
        // SAFETY: `s` is a valid nvmlConfComputeSystemState_t.
        let rc = unsafe { (self.fns.cc_state)(&mut s) };
        if rc != 0 {
            return Err(self.failed("nvmlSystemGetConfComputeState", rc));
        }
        // NVML_CC_SYSTEM_FEATURE_ENABLED, as NVIDIA's verifier reads it.
        Ok(s.cc_feature != 0)
    }

    fn device_count(&self) -> Result<u32, TeeError> {
        let mut n: c_uint = 0;
        // SAFETY: `n` is a valid out-pointer.
        let rc = unsafe { (self.fns.count)(&mut n) };
        if rc != 0 {
            return Err(self.failed("nvmlDeviceGetCount_v2", rc));
        }
        if n > MAX_GPUS {
            return Err(TeeError::Check {
                check: "nvidia.device_count",
                expected: format!("at most {MAX_GPUS} GPUs"),
                actual: n.to_string(),
            });
        }
        Ok(n)
    }

    fn uuid(&self, index: u32) -> Result<String, TeeError> {
        let d = self.device(index)?;
        let mut buf = [0u8; UUID_BUFFER];
        // SAFETY: `buf` holds UUID_BUFFER bytes, the length passed.
        let rc = unsafe { (self.fns.uuid)(d, buf.as_mut_ptr().cast(), UUID_BUFFER as c_uint) };
        if rc != 0 {
            return Err(self.failed("nvmlDeviceGetUUID", rc));
        }
        let end = buf.iter().position(|&b| b == 0).ok_or_else(|| {
            TeeError::malformed(
                format!("GPU {index} UUID"),
                format!("not NUL-terminated within {UUID_BUFFER} bytes"),
            )
        })?;
        String::from_utf8(buf[..end].to_vec())
            .map_err(|_| TeeError::malformed(format!("GPU {index} UUID"), "not UTF-8"))
    }

    fn attestation_report(&self, index: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, TeeError> {
        let d = self.device(index)?;
        let mut r = Box::new(GpuAttestationReport {
            is_cec_attestation_report_present: 0,
            attestation_report_size: 0,
            cec_attestation_report_size: 0,
            nonce: *nonce,
            attestation_report: [0; ATTESTATION_REPORT_SIZE],
            cec_attestation_report: [0; CEC_ATTESTATION_REPORT_SIZE],
        });
        // SAFETY: `r` is a valid nvmlConfComputeGpuAttestationReport_t
        // with the caller's nonce in `nonce`, as NVML takes it.
        let rc = unsafe { (self.fns.report)(d, &mut *r) };
        if rc != 0 {
            return Err(self.failed("nvmlDeviceGetConfComputeGpuAttestationReport", rc));
        }
        bounded(
            &format!("GPU {index} attestation report"),
            &r.attestation_report,
            r.attestation_report_size,
        )
    }

    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, TeeError> {
        let d = self.device(index)?;
        let mut c = Box::new(GpuCertificate {
            cert_chain_size: 0,
            attestation_cert_chain_size: 0,
            cert_chain: [0; CERT_CHAIN_SIZE],
            attestation_cert_chain: [0; ATTESTATION_CERT_CHAIN_SIZE],
        });
        // SAFETY: `c` is a valid nvmlConfComputeGpuCertificate_t.
        let rc = unsafe { (self.fns.certificate)(d, &mut *c) };
        if rc != 0 {
            return Err(self.failed("nvmlDeviceGetConfComputeGpuCertificate", rc));
        }
        // The attestation chain (leaf first), as NVIDIA's verifier uses.
        bounded(
            &format!("GPU {index} certificate chain"),
            &c.attestation_cert_chain,
            c.attestation_cert_chain_size,
        )
    }
}

#[cfg(test)]
mod tests {
    //! Through the C ABI, against a test double of the driver's library
    //! (`testdata/nvml_test_double.c`, compiled here with the system C
    //! compiler; never shipped) serving the recorded Hopper answers.

    use super::*;
    use crate::nvidia::tests::{FIX, NONCE, nonce};
    use crate::nvidia::{GpuEvidence, GpuGate, collect};

    fn report() -> Vec<u8> {
        let hex_text =
            std::fs::read_to_string(format!("{FIX}hopperAttestationReport.txt")).unwrap();
        hex::decode(hex_text.trim()).unwrap()
    }

    fn chain() -> Vec<u8> {
        std::fs::read(format!("{FIX}hopperCertChain.txt")).unwrap()
    }

    fn c_array(name: &str, bytes: &[u8]) -> String {
        let body: Vec<String> = bytes.iter().map(|b| format!("{b:#04x}")).collect();
        format!(
            "static const unsigned char {name}[] = {{{}}};\n",
            body.join(",")
        )
    }

    /// The double compiled with `defines`, in its own directory.
    struct Double {
        dir: tempfile::TempDir,
    }

    impl Double {
        fn build(defines: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("recorded.h"),
                c_array("recorded_report", &report()) + &c_array("recorded_chain", &chain()),
            )
            .unwrap();
            let src = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/nvml_test_double.c");
            let mut cc = std::process::Command::new("gcc");
            cc.args(["-shared", "-fPIC", "-O0", "-Wall", "-Werror", "-I"])
                .arg(dir.path())
                .arg("-o")
                .arg(dir.path().join("libnvidia-ml.so.1"))
                .arg(src);
            for d in defines {
                cc.arg(format!("-D{d}"));
            }
            let out = cc
                .output()
                .expect("gcc (scripts/install-deps.sh installs it)");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Double { dir }
        }

        fn path(&self) -> std::path::PathBuf {
            self.dir.path().join("libnvidia-ml.so.1")
        }

        fn open(&self) -> Result<Nvml, TeeError> {
            Nvml::open_at(&self.path())
        }

        /// A data symbol of the double (same handle: dlopen is refcounted).
        fn read<T: Copy>(&self, name: &str) -> T {
            // SAFETY: the test double; `T` is the C type of `name`.
            unsafe {
                let lib = Library::open(Some(self.path()), RTLD_NOW | RTLD_LOCAL).unwrap();
                let p: Symbol<*const T> = lib.get(format!("{name}\0").as_bytes()).unwrap();
                **p
            }
        }
    }

    fn check_of(e: TeeError) -> String {
        e.to_string()
    }

    #[test]
    fn structure_layouts_match_the_c_header() {
        let d = Double::build(&[]);
        let sizes: [std::ffi::c_ulong; 3] = d.read("veil_double_sizes");
        assert_eq!(
            sizes.map(|s| s as usize),
            [
                std::mem::size_of::<SystemState>(),
                std::mem::size_of::<GpuAttestationReport>(),
                std::mem::size_of::<GpuCertificate>()
            ]
        );
    }

    #[test]
    fn collects_the_recorded_gpu_through_nvml_and_shuts_it_down() {
        let d = Double::build(&[]);
        let nvml = d.open().unwrap();
        let gpus: Vec<GpuEvidence> = collect(&nvml, &nonce()).unwrap();
        let last: [u8; 32] = d.read("veil_double_last_nonce");
        assert_eq!(last, nonce(), "the nonce reaches the driver");
        assert_eq!(gpus.len(), 1);
        assert_eq!(gpus[0].uuid, "GPU-00000000-0000-0000-0000-000000000000");
        assert_eq!(gpus[0].report, report());
        assert_eq!(gpus[0].chain, chain());
        // What came through the C ABI is what veil's verifier accepts.
        let v = crate::nvidia::additional_evidence(&gpus);
        veil_attest::nvidia::evidence::verify(&v, Some(&nonce()), 1_735_689_600).unwrap();
        // ... and the gate opens for it only on the KBS's word.
        let mut gate = GpuGate::new(&gpus);
        assert!(gate.device_nodes().is_empty());
        assert_eq!(d.read::<i32>("veil_double_initialized"), 1);
        drop(nvml);
        assert_eq!(
            d.read::<i32>("veil_double_initialized"),
            0,
            "nvmlShutdown on drop"
        );
        let ok = serde_json::json!({"submods": {"gpu0": {"ear.status": "warning",
            "ear.veraison.annotated-evidence": {"nvidia": {"uuid": gpus[0].uuid}}}}});
        gate.accept_token_claims(&ok).unwrap();
        assert_eq!(gate.device_nodes()[0], "/dev/nvidia0");
    }

    #[test]
    fn a_report_for_another_nonce_and_cc_off_are_refused() {
        let d = Double::build(&[]);
        let nvml = d.open().unwrap();
        let mut other = nonce();
        other[31] ^= 0xff;
        let e = check_of(collect(&nvml, &other).unwrap_err());
        assert!(e.starts_with("nvidia.nonce") && e.contains(NONCE), "{e}");

        let d = Double::build(&["CC_FEATURE=0"]);
        let e = check_of(collect(&d.open().unwrap(), &nonce()).unwrap_err());
        assert!(e.starts_with("nvidia.cc_mode"), "{e}");

        let d = Double::build(&["DEVICE_COUNT=0"]);
        let e = check_of(collect(&d.open().unwrap(), &nonce()).unwrap_err());
        assert!(e.starts_with("nvidia.device_count"), "{e}");
        let d = Double::build(&["DEVICE_COUNT=17"]);
        let e = check_of(collect(&d.open().unwrap(), &nonce()).unwrap_err());
        assert!(e.contains("at most 16 GPUs, got 17"), "{e}");
    }

    #[test]
    fn sizes_past_nvml_buffers_and_unterminated_uuids_are_refused() {
        for (define, needle) in [
            (
                "REPORT_SIZE=0x2001",
                "GPU 0 attestation report: NVML says 8193 bytes",
            ),
            ("REPORT_SIZE=0xffffffff", "NVML says 4294967295 bytes"),
            ("REPORT_SIZE=0", "NVML says 0 bytes"),
            (
                "CHAIN_SIZE=0x1401",
                "GPU 0 certificate chain: NVML says 5121 bytes",
            ),
            ("UUID_UNTERMINATED", "not NUL-terminated within 96 bytes"),
        ] {
            let d = Double::build(&[define]);
            let e = check_of(collect(&d.open().unwrap(), &nonce()).unwrap_err());
            assert!(e.contains(needle), "{define}: {e}");
        }
    }

    #[test]
    fn nvml_errors_and_missing_libraries_name_the_call() {
        let d = Double::build(&["REPORT_ERROR=2"]);
        let e = check_of(collect(&d.open().unwrap(), &nonce()).unwrap_err());
        assert_eq!(
            e,
            "nvidia.nvml: expected nvmlDeviceGetConfComputeGpuAttestationReport to return NVML_SUCCESS, got error 2 (Invalid Argument)"
        );
        let e = check_of(
            Nvml::open_at(std::path::Path::new("/nonexistent/libnvidia-ml.so.1"))
                .err()
                .unwrap(),
        );
        assert!(
            e.starts_with("nvidia.nvml") && e.contains("cannot load /nonexistent"),
            "{e}"
        );
        // A library without the confidential-computing API (libc here).
        let e = check_of(
            Nvml::open_at(std::path::Path::new("libc.so.6"))
                .err()
                .unwrap(),
        );
        assert!(e.contains("nvmlInit_v2 missing"), "{e}");
    }
}
