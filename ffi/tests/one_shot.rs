//! One-shot calls by name go through a per-thread writer per instance: they must land
//! in their own instance, also when one thread alternates between instances and after
//! an instance it used was freed.

use std::ffi::{CStr, c_char};
use std::ptr;

use weir_ffi::*;

fn text(w: *const weir_instance) -> String {
    let mut buf: *mut u8 = ptr::null_mut();
    let mut len = 0usize;
    // SAFETY: `w` is live; the out pointers are valid locals.
    let st = unsafe { weir_flush(w, WEIR_FORMAT_PROMETHEUS_TEXT, &mut buf, &mut len) };
    assert_eq!(st, weir_status::Ok);
    // SAFETY: weir_flush returned `len` initialised bytes at `buf`.
    let out = String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(buf, len) }).into_owned();
    // SAFETY: the buffer and length weir_flush returned, freed once.
    unsafe { weir_buffer_free(buf, len) };
    out
}

fn new_instance() -> *mut weir_instance {
    let mut w = ptr::null_mut();
    // SAFETY: NULL config (defaults) and a valid out pointer.
    let st = unsafe { weir_instance_new(ptr::null(), &mut w) };
    assert_eq!(st, weir_status::Ok);
    w
}

fn add(w: *const weir_instance, v: f64) {
    let name = c"jobs_total";
    let labels = [weir_label {
        name: c"queue".as_ptr(),
        value: c"mail".as_ptr(),
    }];
    // SAFETY: live instance, NUL-terminated strings, one label.
    let st = unsafe { weir_record_counter(w, name.as_ptr(), labels.as_ptr(), 1, v) };
    if st != weir_status::Ok {
        // SAFETY: weir_last_error never returns NULL.
        let msg = unsafe { CStr::from_ptr(weir_last_error() as *const c_char) };
        panic!("{st:?}: {msg:?}");
    }
}

#[test]
fn one_shot_calls_of_two_instances_on_one_thread_stay_apart() {
    let a = new_instance();
    let b = new_instance();
    for _ in 0..3 {
        add(a, 1.0);
        add(b, 10.0);
    }
    assert!(
        text(a).contains("jobs_total{queue=\"mail\"} 3\n"),
        "{}",
        text(a)
    );
    assert!(
        text(b).contains("jobs_total{queue=\"mail\"} 30\n"),
        "{}",
        text(b)
    );
    // SAFETY: both live, freed once, unused afterwards.
    unsafe {
        weir_instance_free(a);
        weir_instance_free(b);
    }
}

#[test]
fn a_new_instance_after_a_freed_one_starts_from_nothing() {
    let old = new_instance();
    add(old, 5.0);
    // SAFETY: live, freed once, unused afterwards.
    unsafe { weir_instance_free(old) };
    let new = new_instance();
    add(new, 2.0);
    assert!(
        text(new).contains("jobs_total{queue=\"mail\"} 2\n"),
        "{}",
        text(new)
    );
    // SAFETY: live, freed once.
    unsafe { weir_instance_free(new) };
}
