//! Kubernetes YAML (and settings TOML) into policy generation, with a
//! fixed image: never panics; whatever is generated is a valid policy in
//! canonical init-data whose digest covers its bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_policy::generate::{ImageInfo, ImageResolver, generate};
use veil_policy::initdata::ParsedInitData;
use veil_policy::settings::Settings;

struct Fixed;

impl ImageResolver for Fixed {
    fn resolve(&self, reference: &str) -> Result<ImageInfo, String> {
        if reference.is_empty() {
            return Err("empty reference".into());
        }
        Ok(ImageInfo {
            digest: format!("sha256:{}", "ab".repeat(32)),
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            user: "1000:1000".into(),
            stop_signal: None,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Settings::from_toml(text);
    if let Ok(g) = generate(&[text], &Fixed, &Settings::default()) {
        for w in &g.workloads {
            assert!(w.policy.validate().is_ok());
            let p = ParsedInitData::parse(w.init_data_toml.as_bytes()).expect("generated init-data parses");
            assert_eq!(p.digest(), w.digest);
        }
    }
});
