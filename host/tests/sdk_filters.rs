//! Real filters built with the Rust SDK, driven through the whole HTTP lifecycle against the
//! in-memory proxy.

mod common;

use std::time::Duration;

use common::*;
use inwasm_host::serialization::property;
use inwasm_host::testing::pairs;
use inwasm_host::*;

#[test]
fn headers_are_read_added_replaced_and_removed() {
    let mut h = Harness::new(filter("headers"), "cfg-value");
    let mut headers = get_request_headers();
    headers.push(("x-remove-me", "gone"));
    let (stream, exchange) = h.stream(&headers);
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Continue);
    assert_eq!(request_header(&exchange, "x-inwasm-config").as_deref(), Some("cfg-value"));
    assert_eq!(request_header(&exchange, "x-inwasm-added").as_deref(), Some("1"));
    assert_eq!(request_header(&exchange, "x-header-count").as_deref(), Some("5"));
    assert_eq!(request_header(&exchange, "x-remove-me"), None);

    set_response(&exchange, &[(":status", "200"), ("server", "upstream")], b"");
    assert_eq!(h.vm.on_response_headers(stream, false).unwrap(), Action::Continue);
    assert_eq!(response_header(&exchange, "x-inwasm").as_deref(), Some("hello"));
    assert_eq!(response_header(&exchange, "server").as_deref(), Some("inwasm"));
    assert_eq!(response_header(&exchange, "x-request-path").as_deref(), Some("/hello"));
    h.vm.finish_stream(stream).unwrap();
    assert!(h.logs().contains(&"request GET /hello".to_string()), "{:?}", h.logs());
}

#[test]
fn local_response_short_circuits() {
    let mut h = Harness::new(filter("headers"), "");
    let mut headers = get_request_headers();
    headers.push(("x-deny", "1"));
    let (stream, exchange) = h.stream(&headers);
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Pause);
    let response = exchange.borrow().local_response.clone().expect("a local response");
    assert_eq!(response.status, 403);
    assert_eq!(response.body, b"denied\n");
    assert_eq!(response.headers, pairs(&[("x-denied", "yes")]));
    assert_eq!(request_header(&exchange, "x-inwasm-added"), None);
}

#[test]
fn request_body_is_buffered_then_rewritten() {
    let mut h = Harness::new(filter("body"), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, false).unwrap();
    exchange.borrow_mut().request_body = b"abc".to_vec();
    assert_eq!(h.vm.on_request_body(stream, 3, false).unwrap(), Action::Pause);
    exchange.borrow_mut().request_body = b"abcdef".to_vec();
    assert_eq!(h.vm.on_request_body(stream, 6, true).unwrap(), Action::Continue);
    assert_eq!(exchange.borrow().request_body, b"fedcba");
}

#[test]
fn bad_request_body_gets_400() {
    let mut h = Harness::new(filter("body"), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    exchange.borrow_mut().request_body = b"this is bad".to_vec();
    assert_eq!(h.vm.on_request_body(stream, 11, true).unwrap(), Action::Pause);
    let response = exchange.borrow().local_response.clone().unwrap();
    assert_eq!((response.status, response.body.as_slice()), (400, &b"rejected: bad body\n"[..]));
}

#[test]
fn response_body_is_transformed_and_length_dropped() {
    let mut h = Harness::new(filter("body"), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    set_response(&exchange, &[(":status", "200"), ("content-length", "5")], b"hello");
    h.vm.on_response_headers(stream, false).unwrap();
    assert_eq!(response_header(&exchange, "content-length"), None);
    assert_eq!(h.vm.on_response_body(stream, 5, false).unwrap(), Action::Pause);
    assert_eq!(h.vm.on_response_body(stream, 5, true).unwrap(), Action::Continue);
    assert_eq!(exchange.borrow().response_body, b"HELLO!");
}

#[test]
fn properties_come_from_host_and_embedding() {
    let vm_config = VmConfig { vm_id: "vm-1".into(), ..VmConfig::default() };
    let paths = "request.path,plugin_name,plugin_vm_id,source.port,missing.thing";
    let mut h = Harness::with_config(filter("properties"), paths, vm_config);
    {
        let mut node = h.node.borrow_mut();
        node.properties.insert("request.path".into(), b"/p?q=1".to_vec());
        node.properties.insert("source.port".into(), property::int(50200));
    }
    let mut headers = get_request_headers();
    headers.push(("x-set-prop", "color=blue"));
    let (stream, exchange) = h.stream(&headers);
    h.vm.on_request_headers(stream, true).unwrap();
    h.vm.on_response_headers(stream, true).unwrap();
    assert_eq!(response_header(&exchange, "x-prop-request-path").as_deref(), Some("/p?q=1"));
    assert_eq!(response_header(&exchange, "x-prop-plugin_name").as_deref(), Some("test"));
    assert_eq!(response_header(&exchange, "x-prop-plugin_vm_id").as_deref(), Some("vm-1"));
    assert_eq!(response_header(&exchange, "x-prop-source-port").as_deref(), Some("50200"));
    assert_eq!(response_header(&exchange, "x-prop-missing-thing").as_deref(), Some("<none>"));
    assert_eq!(response_header(&exchange, "x-prop-readback").as_deref(), Some("blue"));
}

#[test]
fn properties_set_by_filter_stay_in_their_stream() {
    let mut h = Harness::new(filter("properties"), "color");
    let mut headers = get_request_headers();
    headers.push(("x-set-prop", "color=red"));
    let (first, _) = h.stream(&headers);
    h.vm.on_request_headers(first, true).unwrap();
    let (second, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(second, true).unwrap();
    h.vm.on_response_headers(second, true).unwrap();
    assert_eq!(response_header(&exchange, "x-prop-color").as_deref(), Some("<none>"));
}

fn call_filter() -> (Harness, StreamId, testing::Exchange) {
    let mut h = Harness::new(filter("httpcall"), "auth");
    let mut headers = get_request_headers();
    headers.push(("authorization", "Bearer t0k"));
    let (stream, exchange) = h.stream(&headers);
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Pause);
    (h, stream, exchange)
}

#[test]
fn http_call_round_trip_resumes_request() {
    let (mut h, _stream, exchange) = call_filter();
    let (token, request) = h.node.borrow().http_calls[0].clone();
    assert_eq!(request.upstream, "auth");
    assert_eq!(header(&request.headers, ":path").as_deref(), Some("/check"));
    assert_eq!(header(&request.headers, "x-token").as_deref(), Some("Bearer t0k"));
    assert_eq!(request.timeout, Some(Duration::from_millis(500)));
    let response =
        HttpCallResponse { headers: pairs(&[(":status", "200")]), body: b"alice".to_vec(), trailers: Pairs::new() };
    h.vm.on_http_call_response(h.plugin, token, Ok(response)).unwrap();
    assert_eq!(request_header(&exchange, "x-auth-user").as_deref(), Some("alice"));
    assert_eq!(exchange.borrow().continued, vec![StreamType::Request]);
    assert!(h.logs().contains(&format!("call {token} status 200 body 5")), "{:?}", h.logs());
}

#[test]
fn http_call_denial_answers_locally() {
    let (mut h, _stream, exchange) = call_filter();
    let token = h.node.borrow().http_calls[0].0;
    let response = HttpCallResponse { headers: pairs(&[(":status", "401")]), body: vec![], trailers: Pairs::new() };
    h.vm.on_http_call_response(h.plugin, token, Ok(response)).unwrap();
    assert_eq!(exchange.borrow().local_response.as_ref().map(|r| r.status), Some(403));
    assert!(exchange.borrow().continued.is_empty());
}

#[test]
fn failed_http_call_reaches_filter_with_no_headers() {
    let (mut h, _stream, exchange) = call_filter();
    let token = h.node.borrow().http_calls[0].0;
    h.vm.on_http_call_response(h.plugin, token, Err("connection refused".into())).unwrap();
    let response = exchange.borrow().local_response.clone().unwrap();
    assert_eq!(response.status, 502);
    assert_eq!(response.headers, pairs(&[("x-call-failed", "1")]));
}

#[test]
fn unknown_call_tokens_are_ignored() {
    let (mut h, _stream, exchange) = call_filter();
    h.vm.on_http_call_response(h.plugin, 9999, Ok(HttpCallResponse::default())).unwrap();
    assert!(exchange.borrow().local_response.is_none());
    assert_eq!(h.vm.stats().traps, 0);
}

#[test]
fn answers_to_calls_of_an_ended_stream_are_dropped() {
    let (mut h, stream, exchange) = call_filter();
    let token = h.node.borrow().http_calls[0].0;
    h.vm.finish_stream(stream).unwrap();
    let response =
        HttpCallResponse { headers: pairs(&[(":status", "200")]), body: b"alice".to_vec(), trailers: Pairs::new() };
    h.vm.on_http_call_response(h.plugin, token, Ok(response)).unwrap();
    assert!(!h.logs().iter().any(|l| l.starts_with("call ")), "the filter got no answer: {:?}", h.logs());
    assert!(exchange.borrow().continued.is_empty());
    assert_eq!(h.vm.stats().traps, 0, "nothing reached the SDK for a context it deleted");
}

#[test]
fn http_call_without_upstream_is_refused_to_filter() {
    let mut h = Harness::new(filter("httpcall"), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    assert_eq!(h.vm.on_request_headers(stream, true).unwrap(), Action::Pause);
    let response = exchange.borrow().local_response.clone().unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(header(&response.headers, "x-call-error").as_deref(), Some("BadArgument"));
}

#[test]
fn ticks_run_until_filter_stops_them() {
    let mut h = Harness::new(filter("ticker"), "25");
    assert_eq!(h.node.borrow().tick_period, Some(Duration::from_millis(25)));
    for expected in 1..=3 {
        h.vm.on_tick(h.plugin).unwrap();
        let ticks = h.node.borrow().shared_data.get(&b"ticks"[..]).unwrap().0;
        assert_eq!(ticks, expected.to_string().into_bytes());
    }
    assert_eq!(h.node.borrow().tick_period, None, "the filter stops its timer after 3 ticks");
}

#[test]
fn shared_counter_uses_cas_across_vms() {
    let node = testing::Node::default();
    let mut vms: Vec<Harness> = (0..2).map(|_| Harness::new(filter("shared"), "")).collect();
    for h in &mut vms {
        h.node = node.clone();
    }
    // Both VMs share one node (as two workers share shared memory).
    let mut last = 0;
    for round in 0..3 {
        for h in &mut vms {
            let exchange = testing::Exchange::default();
            exchange.borrow_mut().request_headers = pairs(&get_request_headers());
            let stream =
                h.vm.new_stream(h.plugin, testing::MemoryEmbedding::stream(&node, &exchange), StreamLimits::default())
                    .unwrap();
            h.vm.on_request_headers(stream, true).unwrap();
            h.vm.on_response_headers(stream, true).unwrap();
            last = response_header(&exchange, "x-hits").unwrap().parse::<u32>().unwrap();
        }
        assert_eq!(last, 2 * (round + 1));
    }
    let (value, cas) = node.borrow().shared_data.get(&b"hits"[..]).unwrap();
    assert_eq!(value, b"6");
    assert!(cas >= 6, "every write bumps the cas");
}

#[test]
fn queue_items_reach_registering_root() {
    let mut h = Harness::new(filter("queue"), "");
    for path in ["/a", "/b"] {
        let mut headers = get_request_headers();
        headers[1] = (":path", path);
        let (stream, _) = h.stream(&headers);
        h.vm.on_request_headers(stream, true).unwrap();
    }
    h.vm.on_queue_ready(h.plugin, 1).unwrap();
    let logs = h.logs();
    assert!(logs.contains(&"dequeued /a".to_string()) && logs.contains(&"dequeued /b".to_string()), "{logs:?}");
    let node = h.node.borrow();
    assert_eq!(node.shared_data.get(&b"last-event"[..]).unwrap().0, b"/b");
    assert_eq!(node.shared_data.get(&b"dequeued"[..]).unwrap().0, b"2");
}

#[test]
fn metrics_are_defined_incremented_and_read() {
    let mut h = Harness::new(filter("metrics"), "");
    for n in 1..=2 {
        let mut headers = get_request_headers();
        headers.push(("content-length", "42"));
        let (stream, exchange) = h.stream(&headers);
        h.vm.on_request_headers(stream, true).unwrap();
        h.vm.on_response_headers(stream, true).unwrap();
        assert_eq!(response_header(&exchange, "x-requests-total"), Some(n.to_string()));
    }
    let node = h.node.borrow();
    let metric = |name: &str| node.metrics.iter().find(|m| m.name == name).unwrap();
    assert_eq!(metric("requests_total").value, 2);
    assert_eq!(metric("inflight").value, 0);
    assert_eq!(metric("body_size").recorded, vec![42, 42]);
}

#[test]
fn lifecycle_callbacks_arrive_in_order_with_arguments() {
    let mut h = Harness::new(filter("lifecycle"), "");
    let (stream, exchange) = h.stream(&get_request_headers());
    h.vm.on_request_headers(stream, false).unwrap();
    exchange.borrow_mut().request_body = b"12345".to_vec();
    h.vm.on_request_body(stream, 5, true).unwrap();
    h.vm.on_request_trailers(stream).unwrap();
    h.vm.on_response_headers(stream, false).unwrap();
    h.vm.on_response_body(stream, 0, true).unwrap();
    h.vm.on_response_trailers(stream).unwrap();
    h.vm.finish_stream(stream).unwrap();
    let logs = h.logs();
    let expected = [
        "on_vm_start 1",
        "on_configure 1",
        "on_context_create 2",
        "request_headers 2 eos=false",
        "request_body 2 size=5 eos=true",
        "request_trailers 2",
        "response_headers 2",
        "response_body 2",
        "response_trailers 2",
        "on_log 2",
        "on_done 2",
    ];
    let seen: Vec<&str> = logs.iter().map(String::as_str).filter(|l| expected.contains(l)).collect();
    assert_eq!(seen, expected, "all logs: {logs:?}");
}

#[test]
fn context_ids_are_never_reused() {
    let mut h = Harness::new(filter("lifecycle"), "");
    let (first, _) = h.stream(&get_request_headers());
    h.vm.finish_stream(first).unwrap();
    let (second, _) = h.stream(&get_request_headers());
    h.vm.on_request_headers(second, true).unwrap();
    assert!(h.logs().contains(&"request_headers 3 eos=true".to_string()), "{:?}", h.logs());
}

#[test]
fn a_removed_plugin_ends_and_the_others_on_its_vm_go_on() {
    let mut h = Harness::new(filter("lifecycle"), "");
    let second = h.vm.add_plugin(plugin_config("second", ""), testing::MemoryEmbedding::root(&h.node)).unwrap();
    h.vm.remove_plugin(h.plugin).unwrap();
    assert!(h.logs().contains(&"root on_done 1".to_string()), "{:?}", h.logs());
    let exchange = testing::Exchange::default();
    let refused =
        h.vm.new_stream(h.plugin, testing::MemoryEmbedding::stream(&h.node, &exchange), StreamLimits::default());
    assert!(refused.is_err(), "no stream on a removed plugin");
    let stream =
        h.vm.new_stream(second, testing::MemoryEmbedding::stream(&h.node, &exchange), StreamLimits::default()).unwrap();
    h.vm.on_request_headers(stream, true).unwrap();
    assert!(h.logs().contains(&"request_headers 3 eos=true".to_string()), "{:?}", h.logs());
    assert!(h.vm.remove_plugin(h.plugin).is_ok(), "removing twice is harmless");
}
