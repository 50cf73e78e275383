//! Certificates for TLS upstreams, made with the openssl command: a CA of the test's own and
//! a server certificate it signed for some names.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A CA and a server certificate in a directory: `ca.pem`, `server.pem`, `server.key`.
pub struct TestCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCertificates {
    /// Makes them in `dir`, the server certificate for `names` (DNS names).
    pub fn make(dir: &Path, names: &[&str]) -> TestCertificates {
        let path = |name: &str| dir.join(name);
        let san = names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(",");
        let ext = path("server.ext");
        std::fs::write(&ext, format!("subjectAltName={san}\nbasicConstraints=CA:FALSE\n")).unwrap();
        let steps: [Vec<&str>; 3] = [
            vec!["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=inwasm test CA"],
            vec!["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=inwasm test server"],
            vec!["x509", "-req", "-days", "2", "-set_serial", "1"],
        ];
        let files: [Vec<(&str, PathBuf)>; 3] = [
            vec![("-keyout", path("ca.key")), ("-out", path("ca.pem"))],
            vec![("-keyout", path("server.key")), ("-out", path("server.csr"))],
            vec![
                ("-in", path("server.csr")),
                ("-CA", path("ca.pem")),
                ("-CAkey", path("ca.key")),
                ("-extfile", ext.clone()),
                ("-out", path("server.pem")),
            ],
        ];
        for (step, files) in steps.iter().zip(files) {
            let mut command = Command::new("openssl");
            command.args(step);
            for (flag, file) in files {
                command.arg(flag).arg(file);
            }
            let output = command.output().expect("openssl runs (ci/setup.sh installs it)");
            assert!(output.status.success(), "openssl {step:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        TestCertificates { ca: path("ca.pem"), cert: path("server.pem"), key: path("server.key") }
    }
}
