//! Configuration as the binary sees it: file, environment, flags.

use crate::support::{TestServer, herald, run_to_exit, serve, single_error};

#[tokio::test]
async fn given_unknown_key_in_herald_toml_when_serve_should_refuse_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    // ./herald.toml is read without --config.
    std::fs::write(dir.path().join("herald.toml"), "lisen = \"127.0.0.1:0\"\n").unwrap();

    let output = run_to_exit(serve(dir.path())).await;

    let error = single_error(&output, 2);
    assert!(
        error.starts_with("error: unknown configuration key 'lisen' in herald.toml"),
        "{error}"
    );
    assert!(
        !dir.path().join("data").exists(),
        "nothing is created on a config error"
    );
}

#[tokio::test]
async fn given_unknown_herald_env_var_when_serve_should_refuse_naming_variable() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serve(dir.path());
    command.env("HERALD_FOO", "1");

    let output = run_to_exit(command).await;

    let error = single_error(&output, 2);
    assert!(
        error.starts_with(
            "error: unknown configuration key 'foo' from environment variable HERALD_FOO"
        ),
        "{error}"
    );
}

#[tokio::test]
async fn given_bad_listen_value_when_serve_should_refuse_naming_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("custom.toml");
    std::fs::write(&config, "listen = \"nope\"\n").unwrap();
    let mut command = herald(dir.path());
    command.arg("serve").arg("--config").arg(&config);

    let output = run_to_exit(command).await;

    let error = single_error(&output, 2);
    assert!(
        error.starts_with(&format!(
            "error: invalid value for configuration key 'listen' in {}: ",
            config.display()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn given_missing_explicit_config_when_serve_should_refuse_naming_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.args(["serve", "--config", "missing.toml"]);

    let output = run_to_exit(command).await;

    let error = single_error(&output, 2);
    assert!(
        error.starts_with("error: cannot read configuration file missing.toml: "),
        "{error}"
    );
}

#[tokio::test]
async fn given_file_env_and_flag_when_serve_should_apply_them_in_precedence_order() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "data_dir = \"from-file\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut command = herald(dir.path());
    command
        .args(["serve", "--data-dir", "from-flag"])
        .env("HERALD_DATA_DIR", "from-env")
        .env("HERALD_LOG__FORMAT", "json");

    let server = TestServer::spawn(dir, command).await;
    let root = server.dir.path().to_owned();
    server.signal("TERM").await;
    let (status, stderr, _dir) = server.wait().await;

    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(root.join("from-flag/LOCK").exists(), "the flag wins");
    assert!(!root.join("from-env").exists());
    assert!(!root.join("from-file").exists());
    // The environment layer applies: logs are JSON lines.
    let first = stderr.lines().next().unwrap_or_default();
    let record: serde_json::Value =
        serde_json::from_str(first).unwrap_or_else(|error| panic!("{error}: not JSON: {first:?}"));
    assert!(record["message"].is_string(), "{record}");
}

#[tokio::test]
async fn given_version_flag_should_print_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.arg("--version");
    let output = run_to_exit(command).await;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        stdout.trim(),
        format!("herald {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn given_help_flag_should_list_serve() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = herald(dir.path());
    command.arg("--help");
    let output = run_to_exit(command).await;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("serve"), "{stdout}");
}
