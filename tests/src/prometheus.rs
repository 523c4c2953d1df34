//! A real Prometheus (Debian's `prometheus`) for one test: its own
//! directory, a reserved port, and an optional web config (`--web.config.file`:
//! TLS, basic-auth users). The process is killed and its directory removed
//! when the value drops, a panicking test included.

use std::path::{Path, PathBuf};

use crate::ports;

/// A running Prometheus.
pub struct Prometheus {
    /// Its base URL, `http://` or `https://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
    child: Option<std::process::Child>,
    _port: ports::Port,
}

/// The `prometheus` binary on PATH, or what to install.
pub fn binary() -> Result<PathBuf, String> {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("prometheus"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            "needs prometheus on PATH (Debian: apt-get install prometheus; .ci/run installs it)"
                .to_owned()
        })
}

impl Prometheus {
    /// Start Prometheus for the test `name`. `files` are written to its
    /// directory first (certificates, keys); `web_config`, when given, is
    /// its `--web.config.file`, with `{dir}` standing for that directory.
    /// `https` when the web config serves TLS. Panics, saying why, when
    /// Prometheus is missing or cannot start.
    pub fn start(
        name: &str,
        files: &[(&str, &[u8])],
        web_config: Option<&str>,
        https: bool,
    ) -> Prometheus {
        let bin = binary().unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!(
            "switchyard-prometheus-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("Prometheus directory");
        for (file, body) in files {
            std::fs::write(dir.join(file), body).expect("Prometheus file");
        }
        std::fs::write(
            dir.join("prometheus.yml"),
            "global:\n  scrape_interval: 15s\n",
        )
        .expect("Prometheus config");
        let port = ports::reserve();
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(format!("--config.file={}/prometheus.yml", dir.display()))
            .arg(format!("--storage.tsdb.path={}/data", dir.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.get()));
        if let Some(web) = web_config {
            std::fs::write(
                dir.join("web.yml"),
                web.replace("{dir}", &dir.display().to_string()),
            )
            .expect("web config");
            cmd.arg(format!("--web.config.file={}/web.yml", dir.display()));
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            url: format!(
                "{}://127.0.0.1:{}",
                if https { "https" } else { "http" },
                port.get()
            ),
            dir,
            child: Some(child),
            _port: port,
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What it logged so far, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
