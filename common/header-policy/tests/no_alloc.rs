//! A policy whose rules do not apply allocates nothing: conditions,
//! strip lists and security headers are compared in place.
#![allow(unsafe_code)] // a counting global allocator

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use header_policy::{Decision, HeaderList, RequestFacts};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn rules_that_do_not_apply_allocate_nothing() {
    let policy = header_policy::from_text(
        r#"
request:
  - when: { host: "*.internal.example.com" }
    set: { X-A: "{request_id}" }
  - when: { path: [/admin, /debug], method: [POST, DELETE] }
    remove: [Cookie]
  - when: { route: [billing] }
    rename: { X-Old: X-New }
    append: { X-B: "{claim.sub}" }
response:
  - when: { path: /admin }
    set: { Cache-Control: no-store }
strip:
  request: [X-Internal-*, X-Forwarded-User]
  response: [Server, X-Powered-By]
security_headers: { hsts: true, content_type_options: true, frame_options: deny }
"#,
    )
    .unwrap();
    let facts = RequestFacts {
        method: "GET",
        host: "shop.example.com:8443",
        path: "/cart?item=1",
        route: Some("web"),
        request_id: Some("r-1"),
        client_ip: Some("192.0.2.1"),
        ..Default::default()
    };
    let mut request = HeaderList::from_pairs([
        ("host", "shop.example.com"),
        ("accept", "*/*"),
        ("user-agent", "curl/8"),
        ("cookie", "a=b"),
    ]);
    let mut response = HeaderList::from_pairs([
        ("content-type", "text/html"),
        ("strict-transport-security", "max-age=1"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "SAMEORIGIN"),
    ]);
    let (req_before, resp_before) = (request.clone(), response.clone());
    let n = allocations_during(|| {
        assert_eq!(policy.on_request(&facts, &mut request), Decision::Continue);
        policy.on_response(&facts, &mut response);
    });
    assert_eq!((&request, &response), (&req_before, &resp_before));
    assert_eq!(n, 0, "allocations when no rule applies");

    // The counter is live: a rule that applies allocates its value.
    let n = allocations_during(|| {
        let f = RequestFacts {
            host: "a.internal.example.com",
            ..facts
        };
        policy.on_request(&f, &mut request);
    });
    assert!(n > 0);
}
