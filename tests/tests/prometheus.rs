//! A real Prometheus scrapes a real HTTP target and answers queries with its samples; a real
//! promtool lints expositions.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use cairn_testsupport::prometheus::{promtool_check_metrics, sample_value, Prometheus};
use cairn_testsupport::require_command;

const EXPOSITION: &str = "\
# HELP cairn_test_answer The answer the test target exposes.
# TYPE cairn_test_answer gauge
cairn_test_answer{kind=\"test\"} 42
# HELP cairn_test_requests_total Requests the test target served.
# TYPE cairn_test_requests_total counter
cairn_test_requests_total 7
";

/// Serves `body` at `path` over HTTP/1.1 on a free loopback port from a background thread
/// (404 elsewhere) and returns its `host:port`. The thread lives as long as the test process.
fn serve_metrics(path: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let address = listener.local_addr().expect("local address").to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers up to the blank line; a GET has no body.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim() != "" {
                header.clear();
            }
            let target = request_line.split_whitespace().nth(1).unwrap_or("");
            let (status, content) = if target == path {
                ("200 OK", body)
            } else {
                ("404 Not Found", "not found\n")
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{content}",
                content.len()
            );
            let _ = stream.write_all(response.as_bytes());
        }
    });
    address
}

#[test]
fn prometheus_scrapes_target_and_answers_query() {
    if !require_command("prometheus_scrapes_target_and_answers_query", "prometheus") {
        return;
    }
    let target = serve_metrics("/metrics", EXPOSITION);
    let prometheus = Prometheus::start(std::slice::from_ref(&target));

    let result = prometheus
        .wait_for(r#"cairn_test_answer{kind="test"}"#, Duration::from_secs(60))
        .expect("the sample is scraped");
    assert_eq!(sample_value(&result), Some(42.0), "{result}");
    assert_eq!(result[0]["metric"]["job"], "cairn");
    assert_eq!(result[0]["metric"]["instance"], target.as_str());
    assert_eq!(prometheus.value("cairn_test_requests_total"), Some(7.0));
    assert_eq!(prometheus.value(r#"up{job="cairn"}"#), Some(1.0));
    assert!(prometheus
        .query("cairn_no_such_metric")
        .as_array()
        .is_some_and(Vec::is_empty));
}

#[test]
fn prometheus_scrapes_custom_metrics_path() {
    if !require_command("prometheus_scrapes_custom_metrics_path", "prometheus") {
        return;
    }
    let target = serve_metrics("/custom/path", EXPOSITION);
    let prometheus = Prometheus::start_with_path(&[target], "/custom/path");

    let result = prometheus
        .wait_for("cairn_test_requests_total", Duration::from_secs(60))
        .expect("the sample is scraped from the custom path");
    assert_eq!(sample_value(&result), Some(7.0), "{result}");
}

#[test]
fn promtool_accepts_good_and_rejects_bad_exposition() {
    if !require_command(
        "promtool_accepts_good_and_rejects_bad_exposition",
        "promtool",
    ) {
        return;
    }
    promtool_check_metrics(EXPOSITION).expect("a well-formed exposition passes");

    // Not parseable: a sample value that is not a number.
    let err = promtool_check_metrics("cairn_bad{kind=\"x\"} forty-two\n")
        .expect_err("a malformed sample is rejected");
    assert!(!err.is_empty());
    // Parseable but linted: a counter without the _total suffix.
    let unsuffixed = "# HELP cairn_requests Requests.\n# TYPE cairn_requests counter\n\
                      cairn_requests 1\n";
    let err = promtool_check_metrics(unsuffixed).expect_err("a lint problem is rejected");
    assert!(err.contains("_total"), "{err}");
}
