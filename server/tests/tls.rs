//! TLS with rustls: the coordinator started with `--tls-cert`/`--tls-key` (and a client CA
//! for mutual TLS) serves clients and workers that trust its CA and show their certificate,
//! and refuses those that don't. Certificates are made for the test with `openssl`.

mod support;

use std::{path::Path, process::Command};

use switchyard_client::{Client, JobSpec, Tls};
use switchyard_proto::v1::JobState;
use switchyard_testkit::{Coordinator, Worker};

use support::PATIENCE;

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        status.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=switchyard test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth",
        ),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_serves_trusted_clients_and_workers_and_refuses_others() {
    let dir = tempfile::tempdir().expect("temporary directory");
    certificates(dir.path());
    let path = |name: &str| dir.path().join(name).display().to_string();
    let coordinator = Coordinator::start_with(&[
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
    ])
    .await;
    let url = format!("https://{}", coordinator.addr());

    let tls = Tls::from_files(
        &dir.path().join("ca.pem"),
        Some((
            &dir.path().join("client.pem"),
            &dir.path().join("client.key"),
        )),
    )
    .expect("read the certificates");
    let client = Client::connect_with(url.clone(), Some(&tls))
        .await
        .expect("connect over TLS");
    let _worker = Worker::start(
        &url,
        &[
            "--ca-cert",
            &path("ca.pem"),
            "--client-cert",
            &path("client.pem"),
            "--client-key",
            &path("client.key"),
        ],
    )
    .await;
    let job = client
        .run(
            JobSpec::new("default", "echo").payload("over tls"),
            Some(PATIENCE),
        )
        .await
        .expect("a job runs end to end over TLS");
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.output, b"over tls");

    // Without a client certificate, the handshake fails: nothing gets through.
    let no_identity = Tls {
        ca: tls.ca.clone(),
        identity: None,
    };
    let refused = match Client::connect_with(url.clone(), Some(&no_identity)).await {
        Err(_) => true,
        Ok(client) => client.get(&job.job_id).await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");

    // Plaintext to a TLS port gets nowhere either.
    let plain = match Client::connect(format!("http://{}", coordinator.addr())).await {
        Err(_) => true,
        Ok(client) => client.get(&job.job_id).await.is_err(),
    };
    assert!(plain, "plaintext is refused");
}
