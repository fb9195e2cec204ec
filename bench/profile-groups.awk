# Groups `perf report --stdio --sort dso,sym` lines ("  12.3%  dso  [k] sym")
# into coarse buckets, so a profile says where the time goes at a glance.
# Kernel time is split by what the kernel was doing.
/%/ {
    pct = $1; sub(/%/, "", pct); pct += 0
    dso = $2; kind = $3; sym = $4
    if (kind == "[k]") {
        if (sym ~ /fault|folio|page|pte|pmd|vma|mas_|memcg|mem_cgroup|charge|lru|zap|unmap|madvise|mmap|munmap|rmap|clear_|mm_/) g = "kernel: memory (page faults, mmap/madvise)"
        else if (sym ~ /tcp|inet|ip_|ipv4|skb|netif|net_|sock|dev_|loopback|softirq|__napi/) g = "kernel: network (loopback TCP)"
        else if (sym ~ /futex|schedule|switch|wake|sched|pick_|enqueue|dequeue|idle/) g = "kernel: scheduling, futex"
        else if (sym ~ /epoll|poll|syscall|entry_|fdget|read|write|sys_/) g = "kernel: syscalls (epoll, read/write)"
        else if (sym ~ /_raw_spin_unlock_irqrestore|_raw_spin_unlock_irq/) g = "kernel: irq-restore (timer-sampled, mostly attributed from the above)"
        else g = "kernel: other"
    } else if (dso ~ /^\[JIT\]/ || dso ~ /memfd/ || dso == "[unknown]") {
        g = "guest wasm code (JIT)"
    } else if (dso ~ /^libc/) {
        if (sym ~ /malloc|free|realloc|calloc|_int_/) g = "libc: malloc/free"
        else if (sym ~ /mem(move|cpy|set|cmp)/) g = "libc: memcpy/memset"
        else g = "libc: other"
    } else if (sym ~ /wasmtime|cranelift|component|Instance|Store|instantiate/) {
        g = "host: wasmtime runtime"
    } else if (sym ~ /sqlx|postgres|Postgres|Pg|sqlite/) {
        g = "host: sqlx"
    } else if (sym ~ /hyper|axum|http|h1|tower/) {
        g = "host: HTTP (hyper/axum)"
    } else if (sym ~ /serde|json/) {
        g = "host: JSON"
    } else if (sym ~ /tokio/) {
        g = "host: tokio"
    } else {
        g = dso ": other"
    }
    sum[g] += pct; total += pct
}
END {
    n = 0
    for (g in sum) order[++n] = g
    # selection sort, largest first
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (sum[order[j]] > sum[order[i]]) { t = order[i]; order[i] = order[j]; order[j] = t }
    for (i = 1; i <= n; i++) printf "%6.1f%%  %s\n", sum[order[i]], order[i]
}
