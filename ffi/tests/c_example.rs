//! Builds `examples/c/admission.c` against `include/wscap.h` and the static library, as C11 and
//! as C++, runs it, and runs it again under valgrind when valgrind is installed. Builds
//! `examples/c/global.c` the same two ways and runs it against a real redis-server.
//!
//! The static library comes from the cargo invocation that built this test: `cargo test -p
//! wscap-ffi` compiles the crate with all its crate types, so `libwscap_ffi.a` sits in
//! `<target>/<profile>/deps/` next to this test binary (`cargo build -p wscap-ffi` also copies it
//! to `<target>/<profile>/`). This test never runs cargo itself: a nested cargo could wait
//! forever on the build lock that the outer one holds.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `<target>/<profile>/deps`, where this test binary lives.
fn deps_dir() -> PathBuf {
    std::env::current_exe()
        .expect("current_exe")
        .parent()
        .expect("deps dir")
        .to_path_buf()
}

fn static_lib() -> PathBuf {
    let deps = deps_dir();
    let candidates = [
        deps.join("libwscap_ffi.a"),
        deps.parent().unwrap().join("libwscap_ffi.a"),
    ];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "libwscap_ffi.a not found in {:?}: build it first with `cargo build -p wscap-ffi` \
                 (same profile and CARGO_TARGET_DIR as this test)",
                candidates
            )
        })
}

fn out_dir() -> PathBuf {
    let dir = deps_dir().parent().unwrap().join("c-example");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn check(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Compiles `examples/c/admission.c`; `cxx` compiles it as C++ with g++.
fn build(name: &str, cxx: bool, defines: &[&str]) -> PathBuf {
    build_source("admission.c", name, cxx, defines)
}

/// Compiles `examples/c/<source>` into `name`; `cxx` compiles it as C++ with g++.
fn build_source(source: &str, name: &str, cxx: bool, defines: &[&str]) -> PathBuf {
    let repo = repo();
    let exe = out_dir().join(name);
    let mut cmd = Command::new(if cxx { "g++" } else { "gcc" });
    if cxx {
        cmd.args(["-x", "c++", "-std=c++17"]);
    } else {
        cmd.arg("-std=c11");
    }
    cmd.args(["-Wall", "-Wextra", "-Werror", "-g", "-pthread"])
        .args(defines)
        .arg("-I")
        .arg(repo.join("include"))
        .arg(repo.join("examples/c").join(source))
        .args(["-x", "none"])
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe);
    check(&mut cmd);
    exe
}

fn assert_admission_output(stdout: &str) {
    assert!(
        stdout.contains(
            "refused as expected: clusters[0].hosts[0].address: invalid host address \"pod-1:80\""
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(", limit violations 0, unexpected 0\n"),
        "{stdout}"
    );
    for host in ["127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"] {
        assert!(
            stdout.contains(&format!(
                "wscap_active_connections{{cluster=\"pods\",host=\"{host}\"}} 0\n"
            )),
            "{host} not back to zero:\n{stdout}"
        );
    }
    assert!(stdout.contains("wscap_connection_limit{cluster=\"pods\",host=\"127.0.0.1:9002\"} 3\n"));
    assert!(stdout.ends_with("OK\n"), "{stdout}");
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn c_example_runs_within_limits() {
    let exe = build("admission", false, &[]);
    let stdout = check(Command::new(&exe).arg("3000"));
    assert_admission_output(&stdout);
}

#[test]
fn c_example_is_clean_under_valgrind() {
    if !have("valgrind") {
        eprintln!("valgrind not installed: skipped");
        return;
    }
    let valgrind = |exe: &Path| {
        let mut cmd = Command::new("valgrind");
        cmd.args([
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--quiet",
        ])
        .arg(exe)
        .arg("400");
        cmd
    };
    let exe = build("admission-vg", false, &[]);
    assert_admission_output(&check(&mut valgrind(&exe)));

    // The same check must catch a permit that is never released.
    let leaky = build("admission-leak", false, &["-DWSCAP_EXAMPLE_LEAK"]);
    let out = run(&mut valgrind(&leaky));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("definitely lost"),
        "valgrind did not report the leaked permit ({}):\n{stderr}",
        out.status
    );
}

#[test]
fn c_example_compiles_and_runs_as_cxx() {
    let exe = build("admission-cxx", true, &[]);
    assert_admission_output(&check(Command::new(&exe).arg("500")));
}

#[test]
fn header_is_strict_c99_and_cxx11_on_its_own() {
    let repo = repo();
    let tu = out_dir().join("header_only.c");
    std::fs::write(
        &tu,
        "#include \"wscap.h\"\n#include \"wscap.h\" /* include guard */\n\
         int main(void) { wscap_registry *r = 0; (void)r; return (int)WSCAP_RESULT_OK; }\n",
    )
    .unwrap();
    for (compiler, std) in [("gcc", "-std=c99"), ("g++", "-std=c++11")] {
        let mut cmd = Command::new(compiler);
        if compiler == "g++" {
            cmd.args(["-x", "c++"]);
        }
        cmd.args([
            std,
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(repo.join("include"))
        .arg(&tu);
        check(&mut cmd);
    }
}

/// The example in ffi/README.md compiles, links against the shared library and runs.
#[test]
fn readme_example_links_shared_and_runs() {
    let readme = std::fs::read_to_string(repo().join("ffi/README.md")).unwrap();
    let example = readme
        .split("### Example")
        .nth(1)
        .and_then(|s| s.split("```c\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("ffi/README.md has a C example");
    let dir = out_dir();
    let src = dir.join("readme_example.c");
    std::fs::write(&src, example).unwrap();
    let lib_dir = static_lib().parent().unwrap().to_path_buf();
    assert!(
        lib_dir.join("libwscap_ffi.so").exists(),
        "libwscap_ffi.so missing next to libwscap_ffi.a in {lib_dir:?}"
    );
    let exe = dir.join("readme_example");
    check(
        Command::new("gcc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(repo().join("include"))
            .arg(&src)
            .arg("-L")
            .arg(&lib_dir)
            .args(["-lwscap_ffi", "-o"])
            .arg(&exe),
    );
    let stdout = check(Command::new(&exe).env("LD_LIBRARY_PATH", &lib_dir));
    assert!(stdout.starts_with("connect to 10.0.0."), "{stdout}");
}

/// examples/c/bench.c stays buildable (run briefly here; its figures come from a release build).
#[test]
fn bench_example_builds_and_runs() {
    let exe = out_dir().join("bench");
    check(
        Command::new("gcc")
            .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(repo().join("include"))
            .arg(repo().join("examples/c/bench.c"))
            .arg(static_lib())
            .args(["-lpthread", "-ldl", "-lm", "-o"])
            .arg(&exe),
    );
    let stdout = check(Command::new(&exe).arg("1000"));
    assert_eq!(
        stdout.matches("acquire+release: by name ").count(),
        3,
        "{stdout}"
    );
}

#[test]
fn global_example_admits_exactly_the_fleet_limit() {
    for (name, cxx) in [("global", false), ("global-cxx", true)] {
        let exe = build_source("global.c", name, cxx, &[]);
        // A fresh Redis per run: the ledger (and its restart grace) starts empty each time.
        let redis = wscap_testkit::RedisServer::start();
        let stdout = check(Command::new(&exe).arg(redis.url()));
        assert!(
            stdout.contains("refused as expected: invalid global config: refresh_ms"),
            "{stdout}"
        );
        assert!(
            stdout.contains("admitted 6 (per host 2 2 2), then refused 4 of 4, limit violations 0"),
            "{stdout}"
        );
        assert!(stdout.contains(r#""live":2"#), "{stdout}");
        assert!(stdout.ends_with("OK\n"), "{stdout}");
    }
}
