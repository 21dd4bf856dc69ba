// shard._vsnative: hnswlib v0.8.0's HierarchicalNSW behind a pybind11 class that mirrors the
// parts of `hnswlib.Index` the shard uses, plus two searches the official binding lacks:
//
//   knn_query(..., allowed=mask)  graph search restricted to the labels set in a byte mask,
//                                 checked natively per candidate (no Python call per node);
//                                 short rows are padded (label -1, distance +inf).
//                                 strategy="sweep" (default): hnswlib's filtered traversal;
//                                 strategy="acorn": ACORN-1 (AcornSearch below).
//   exact_query(data, labels, k)  exact top-k over the given labels with the index's own SIMD
//                                 distance on its level-0 storage (no gather, no copy).
//
// Our own code. hnswlib's headers (Apache-2.0) are not in this repository: shard/native/build.py
// takes them from the hnswlib 0.8.0 sdist on PyPI (sha256-pinned) at build time, so the index
// file format is exactly hnswlib 0.8.0's: files saved here load in hnswlib.Index and back.
//
// Thread-safety, wider than hnswlib's (whose searches must not overlap an insert): searches run
// concurrently with each other and with add_items (one at a time). While add_items runs, searches
// take live_search (each link list copied under its node's lock; only nodes whose insertion had
// ended are read) instead of hnswlib's lock-free searchKnn, which resumes once it returns: so a
// fold can add to the index a published graph is searched on (knn_query's `limit` hides the
// labels the graph does not hold yet). mark_deleted beside searches and inserts is safe in
// practice (see there). resize_index and load_index wait for the calls in flight and hold new
// ones back (Gate); save_index and copy_from wait for an add_items in progress.
// The GIL is released during searches, inserts, save and load, and around every wait.

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "hnswlib.h"

#ifndef VS_HNSWLIB_VERSION
#define VS_HNSWLIB_VERSION "unknown"
#endif
#ifndef VS_BUILD_FLAGS
#define VS_BUILD_FLAGS ""
#endif

namespace py = pybind11;

namespace {

using hnswlib::labeltype;
using hnswlib::tableint;
// Level-0 blocks this module mapped itself (move_level0_to_huge_pages): start -> mapped length.
// hnswlib frees its block with free(); a mapped one is unmapped instead (release_level0, Hnsw's
// destructor) and grown with mremap (grow_index): its pages move, none is copied.
std::mutex g_mapped_mutex;
std::unordered_map<const void*, size_t> g_mapped;

size_t mapped_length(const void* block) {
    std::lock_guard<std::mutex> lock(g_mapped_mutex);
    auto found = g_mapped.find(block);
    return found == g_mapped.end() ? 0 : found->second;
}

void set_mapped(const void* block, size_t length) {
    std::lock_guard<std::mutex> lock(g_mapped_mutex);
    if (length == 0) {
        g_mapped.erase(block);
    } else {
        g_mapped[block] = length;
    }
}

// free() for hnswlib's own blocks, munmap for the ones mapped here.
void release_level0(char* block) {
    if (block == nullptr) {
        return;
    }
#if defined(__linux__)
    const size_t length = mapped_length(block);
    if (length != 0) {
        set_mapped(block, 0);
        munmap(block, length);
        return;
    }
#endif
    free(block);
}

// hnswlib's index, whose destructor first releases a level-0 block mapped here (hnswlib's own
// clear() then frees nothing: free(nullptr)).
struct Hnsw : hnswlib::HierarchicalNSW<float> {
    using hnswlib::HierarchicalNSW<float>::HierarchicalNSW;
    Hnsw(const Hnsw&) = delete;
    Hnsw& operator=(const Hnsw&) = delete;
    ~Hnsw() override {
        release_level0(data_level0_memory_);
        data_level0_memory_ = nullptr;
    }
};

constexpr tableint kAbsent = std::numeric_limits<tableint>::max();
constexpr uint64_t kNoEntry = std::numeric_limits<uint64_t>::max();

// hnswlib's python_bindings ParallelFor (borrowed from nmslib): ids [start, end) handed out
// one at a time to num_threads threads; the first exception stops the loop and is rethrown.
template <class Function>
void parallel_for(size_t start, size_t end, size_t num_threads, Function fn) {
    if (num_threads == 0) {
        num_threads = std::max(1u, std::thread::hardware_concurrency());
    }
    if (num_threads == 1) {
        for (size_t id = start; id < end; id++) {
            fn(id, 0);
        }
        return;
    }
    std::vector<std::thread> threads;
    std::atomic<size_t> current(start);
    std::exception_ptr last_exception = nullptr;
    std::mutex last_exception_mutex;
    for (size_t thread_id = 0; thread_id < num_threads; ++thread_id) {
        threads.emplace_back([&, thread_id] {
            while (true) {
                size_t id = current.fetch_add(1);
                if (id >= end) {
                    break;
                }
                try {
                    fn(id, thread_id);
                } catch (...) {
                    std::unique_lock<std::mutex> lock(last_exception_mutex);
                    last_exception = std::current_exception();
                    current = end;
                    break;
                }
            }
        });
    }
    for (auto& thread : threads) {
        thread.join();
    }
    if (last_exception) {
        std::rethrow_exception(last_exception);
    }
}

// A label is allowed iff label < size and mask[label] != 0.
class MaskFilter : public hnswlib::BaseFilterFunctor {
 public:
    MaskFilter(const uint8_t* mask, size_t size) : mask_(mask), size_(size) {}
    bool operator()(labeltype label) override { return label < size_ && mask_[label] != 0; }

 private:
    const uint8_t* mask_;
    size_t size_;
};

// hnswlib's CustomFilterFunctor: a Python callable (pybind11 takes the GIL for each call).
class CallbackFilter : public hnswlib::BaseFilterFunctor {
 public:
    explicit CallbackFilter(const std::function<bool(labeltype)>& fn) : fn_(fn) {}
    bool operator()(labeltype label) override { return fn_(label); }

 private:
    std::function<bool(labeltype)> fn_;
};

void input_shape(const py::buffer_info& buffer, size_t* rows, size_t* features) {
    if (buffer.ndim != 2 && buffer.ndim != 1) {
        throw std::runtime_error("Input vector data wrong shape. Number of dimensions " +
                                 std::to_string(buffer.ndim) + ". Data must be a 1D or 2D array.");
    }
    if (buffer.ndim == 2) {
        *rows = buffer.shape[0];
        *features = buffer.shape[1];
    } else {
        *rows = 1;
        *features = buffer.shape[0];
    }
}

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// Label <-> internal id tables, built from the index's level-0 storage in one pass:
//   internal_of  label -> internal id, when labels are dense (max label < 2 * count + 1024; the
//                shard's are 0..n-1), else empty (lookups then use hnswlib's label_lookup_);
//   label_of     internal id -> label as uint32, when every label fits, else empty: ACORN checks
//                the allowed mask for many nodes it never scores, and this compact array (4 bytes
//                a node) spares a cache miss into each node's element, where hnswlib keeps the
//                label after the vector;
//   identity     label == internal id for every node (a graph built by one thread in label
//                order): the mask is then read at the internal id.
struct LabelTables {
    std::vector<tableint> internal_of;
    std::vector<uint32_t> label_of;
    bool identity = false;

    void build(const Hnsw& alg) {
        const size_t count = alg.cur_element_count;
        internal_of.clear();
        label_of.assign(count, 0);
        labeltype max_label = 0;
        bool fits = true;
        identity = true;
        for (size_t i = 0; i < count; i++) {
            const labeltype label = alg.getExternalLabel(static_cast<tableint>(i));
            max_label = std::max(max_label, label);
            identity = identity && label == i;
            if (label >= std::numeric_limits<uint32_t>::max()) {
                fits = false;
            } else {
                label_of[i] = static_cast<uint32_t>(label);
            }
        }
        if (!fits) {
            label_of.clear();
            label_of.shrink_to_fit();
        }
        if (count > 0 && max_label < 2 * count + 1024) {
            internal_of.assign(max_label + 1, kAbsent);
            for (size_t i = 0; i < count; i++) {
                internal_of[alg.getExternalLabel(static_cast<tableint>(i))] = static_cast<tableint>(i);
            }
        }
    }
};

// A compact copy of the level-0 link lists: (2M + 1) words a node, the count then the ids (13 MB
// at 100k nodes, M 16: 8% of the index). ACORN reads the lists of many nodes whose vectors it
// never reads, and hnswlib keeps each list in the node's element (1.7 KB at 384-d), one cache
// miss apart; the compact copy mostly stays in the L3 cache. Measured at 100k MiniLM rows: 5%
// less time at 20% allowed, 10% at 10%, 15% at 5%, 20% at 2%.
struct CompactLinks {
    std::vector<tableint> words;
    size_t stride = 0;

    void build(const Hnsw& alg) {
        const size_t count = alg.cur_element_count;
        stride = alg.maxM0_ + 1;
        words.assign(count * stride, 0);
        for (size_t i = 0; i < count; i++) {
            const hnswlib::linklistsizeint* list = alg.get_linklist0(static_cast<tableint>(i));
            const size_t size = alg.getListCount(const_cast<hnswlib::linklistsizeint*>(list));
            words[i * stride] = static_cast<tableint>(size);
            std::memcpy(&words[i * stride + 1], list + 1, size * sizeof(tableint));
        }
    }
};

// One bit per internal id (the visited set of one query: 12.5 KB at 100k nodes, so it stays in
// L1/L2 while the vectors stream through; hnswlib's visited list is 2 bytes a node).
class Bits {
 public:
    explicit Bits(size_t n) : words_((n + 63) / 64, 0) {}
    bool test(size_t i) const { return (words_[i >> 6] >> (i & 63)) & 1u; }
    void set(size_t i) { words_[i >> 6] |= uint64_t{1} << (i & 63); }

 private:
    std::vector<uint64_t> words_;
};

// Parameters of the ACORN search; 0 means the default written after each. Benchmarks change them
// with _vsnative._acorn_tuning (process-wide, read when a knn_query call starts; not for
// production use).
struct AcornTuning {
    size_t cap = 0;              // allowed nodes collected per expansion; 0: 2 * maxM0_ (4 * M)
    size_t min_seen = 0;         // three hops and more while fewer allowed seen; 0: maxM0_
    size_t budget = 0;           // disallowed nodes expanded per expansion at most; 0: 4 * maxM0_
    double sweep_density = -1;   // sweep where this share of the neighbours is allowed; <0: 0.25
    size_t seed_batch = 0;       // entry points added per round when results are short; 0: 16
};
AcornTuning g_acorn_tuning;

// Work counters summed over the ACORN queries of the process (_vsnative._acorn_stats reads and
// resets them): what the benchmark reports next to the time.
struct AcornCounters {
    std::atomic<uint64_t> queries{0}, expansions{0}, distances{0}, lists{0}, seeds{0};
};
AcornCounters g_acorn_counters;

// ACORN-1 (Patel et al., SIGMOD 2024, arXiv:2403.04871) on hnswlib's graph, as Lucene 10's
// FilteredHnswGraphSearcher and Weaviate's ACORN strategy do it, with Weaviate's switch to
// sweeping where the allowed nodes are dense (our own code):
//   - upper layers: hnswlib's greedy descent, unfiltered;
//   - layer 0: best-first search where only allowed nodes enter the result heap. Expanding a
//     node looks at its neighbours:
//       * where at least `sweep_density` of them are allowed (at 25% and more, random), as
//         hnswlib's filtered search: every unvisited neighbour is scored, and enters the
//         candidates when it is nearer than the worst result; the disallowed ones are for
//         navigation only. Where most nodes are allowed, their distances guide the search
//         better than two-hop lists do (measured: ACORN-1 at 50% needs 2.4x the distances of
//         this for the same recall);
//       * elsewhere (ACORN-1): its unvisited allowed neighbours are collected; then those of its
//         disallowed neighbours (two hops), breadth first, until `cap` allowed nodes are
//         collected; while fewer than `min_seen` allowed nodes were seen around the node
//         (visited ones included), disallowed nodes found at two hops are queued too (three hops
//         and more, as Lucene's minToScore), at most `budget` disallowed nodes in all. Only the
//         collected (allowed) nodes are scored. A disallowed node whose list was read to the end
//         is marked visited (never read again); one cut short by the cap is not;
//   - stop as the unfiltered search: the nearest candidate is farther than the worst of `ef`
//     results held;
//   - the entry point is scored in the descent; it enters the results only when allowed, and is
//     expanded either way. When the search runs out of candidates with fewer than `ef` results,
//     unvisited allowed live labels are added as entry points (in label order, from a cursor
//     that only moves forward, `seed_batch` at a time; Weaviate seeds allowed nodes likewise),
//     so a query ends with min(ef, live allowed) results whatever the connectivity;
//   - deleted nodes are navigated through but never returned.
class AcornSearch {
 public:
    using Candidate = std::pair<float, tableint>;
    using Heap = std::priority_queue<Candidate, std::vector<Candidate>, Hnsw::CompareByFirst>;

    AcornSearch(const Hnsw& alg, const uint8_t* mask, size_t mask_size, const LabelTables& tables,
                const CompactLinks& links)
        : alg_(alg),
          mask_(mask),
          mask_size_(mask_size),
          tables_(tables),
          label_of_(tables.label_of.empty() ? nullptr : tables.label_of.data()),
          links_(links.words.size() == alg.cur_element_count * links.stride && links.stride == alg.maxM0_ + 1
                     ? links.words.data()
                     : nullptr),
          links_stride_(links.stride),
          count_(alg.cur_element_count),
          base_(alg.data_level0_memory_),
          stride_(alg.size_data_per_element_),
          data_offset_(alg.offsetData_),
          data_size_(alg.data_size_),
          distance_(alg.fstdistfunc_),
          param_(alg.dist_func_param_) {
        const AcornTuning tuning = g_acorn_tuning;
        cap_ = tuning.cap ? tuning.cap : 2 * alg.maxM0_;
        min_seen_ = tuning.min_seen ? tuning.min_seen : alg.maxM0_;
        budget_ = tuning.budget ? tuning.budget : 4 * alg.maxM0_;
        sweep_density_ = tuning.sweep_density >= 0 ? tuning.sweep_density : 0.25;
        seed_batch_ = tuning.seed_batch ? tuning.seed_batch : 16;
    }

    // Up to `ef` nearest allowed live nodes: a max-heap of (distance, internal id).
    Heap search(const void* query, size_t ef) const {
        Heap results;
        if (count_ == 0 || ef == 0) {
            return results;
        }
        float entry_dist;
        const tableint entry = descend(query, &entry_dist);
        State state(count_, ef);
        state.to_score.reserve(cap_ + alg_.maxM0_);
        state.explore.reserve(budget_ + alg_.maxM0_);
        state.visited.set(entry);
        if (allowed(entry)) {
            offer(&state, &results, entry_dist, entry);
        } else {
            state.candidates.emplace(-entry_dist, entry);
        }
        size_t cursor = 0;
        while (true) {
            while (!state.candidates.empty()) {
                const Candidate top = state.candidates.top();
                if (-top.first > state.lower && results.size() >= ef) {
                    break;
                }
                state.candidates.pop();
                expand(query, &state, &results, top.second);
            }
            if (results.size() >= ef || !reseed(query, &state, &results, &cursor)) {
                break;
            }
        }
        g_acorn_counters.queries.fetch_add(1, std::memory_order_relaxed);
        g_acorn_counters.expansions.fetch_add(state.expansions, std::memory_order_relaxed);
        g_acorn_counters.distances.fetch_add(state.distances, std::memory_order_relaxed);
        g_acorn_counters.lists.fetch_add(state.lists, std::memory_order_relaxed);
        g_acorn_counters.seeds.fetch_add(state.seeds, std::memory_order_relaxed);
        return results;
    }

    labeltype label(tableint id) const { return label_of_ ? label_of_[id] : alg_.getExternalLabel(id); }

 private:
    static constexpr size_t kAhead = 2;  // vectors prefetched whole ahead of the one scored

    struct State {
        State(size_t count, size_t ef_) : visited(count), ef(ef_) {}
        Bits visited;
        size_t ef;
        float lower = std::numeric_limits<float>::infinity();  // worst result held
        Heap candidates;                                        // (-distance, id): top = nearest
        std::vector<tableint> to_score;
        std::vector<tableint> explore;
        uint64_t expansions = 0, distances = 0, lists = 0, seeds = 0;
    };

    bool allowed(tableint id) const {
        if (tables_.identity) {
            return id < mask_size_ && mask_[id] != 0;
        }
        const labeltype l = label(id);
        return l < mask_size_ && mask_[l] != 0;
    }

    const char* vector_of(tableint id) const { return base_ + id * stride_ + data_offset_; }

    const tableint* links0(tableint id, size_t* size) const {
        if (links_ != nullptr) {
            const tableint* at = links_ + id * links_stride_;
            *size = at[0];
            return at + 1;
        }
        const hnswlib::linklistsizeint* list = alg_.get_linklist0(id);
        *size = alg_.getListCount(const_cast<hnswlib::linklistsizeint*>(list));
        return reinterpret_cast<const tableint*>(list + 1);
    }

    void prefetch_list(tableint id) const {
#ifdef USE_SSE
        if (links_ != nullptr) {
            const char* at = reinterpret_cast<const char*>(links_ + id * links_stride_);
            _mm_prefetch(at, _MM_HINT_T0);
            _mm_prefetch(at + 64, _MM_HINT_T0);
            _mm_prefetch(at + 128, _MM_HINT_T0);
            return;
        }
        const char* at = reinterpret_cast<const char*>(alg_.get_linklist0(id));
        const size_t bytes = alg_.size_links_level0_;
        for (size_t offset = 0; offset < bytes; offset += 64) {
            _mm_prefetch(at + offset, _MM_HINT_T0);
        }
#else
        (void)id;
#endif
    }

    // Every cache line of a vector (1.5 KB at 384-d: 24-25 lines). Measured: ~10% less time than
    // hnswlib's one line of the next neighbour.
    void prefetch_vector(tableint id) const {
#ifdef USE_SSE
        const uintptr_t start = reinterpret_cast<uintptr_t>(vector_of(id)) & ~uintptr_t{63};
        const uintptr_t end = reinterpret_cast<uintptr_t>(vector_of(id)) + data_size_;
        for (uintptr_t at = start; at < end; at += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
        }
#else
        (void)id;
#endif
    }

    // hnswlib's searchKnn above layer 0: greedy, unfiltered.
    tableint descend(const void* query, float* dist_out) const {
        tableint current = alg_.enterpoint_node_;
        float current_dist = distance_(query, vector_of(current), param_);
        for (int level = alg_.maxlevel_; level > 0; level--) {
            bool changed = true;
            while (changed) {
                changed = false;
                const unsigned int* data = alg_.get_linklist(current, level);
                const int size = alg_.getListCount(const_cast<unsigned int*>(data));
                const tableint* links = reinterpret_cast<const tableint*>(data + 1);
                for (int i = 0; i < size; i++) {
                    const tableint candidate = links[i];
                    if (candidate >= count_) {
                        throw std::runtime_error("cand error");
                    }
                    const float d = distance_(query, vector_of(candidate), param_);
                    if (d < current_dist) {
                        current_dist = d;
                        current = candidate;
                        changed = true;
                    }
                }
            }
        }
        *dist_out = current_dist;
        return current;
    }

    // An allowed node scored at distance d: a candidate and a result when it is among the ef
    // nearest so far (a deleted one: a candidate only).
    void offer(State* state, Heap* results, float d, tableint id) const {
        if (results->size() < state->ef || d < state->lower) {
            state->candidates.emplace(-d, id);
            if (alg_.num_deleted_ == 0 || !alg_.isMarkedDeleted(id)) {
                results->emplace(d, id);
                if (results->size() > state->ef) {
                    results->pop();
                }
                state->lower = results->top().first;
            }
        }
    }

    // Distances of state->to_score: the first `allowed_count` are allowed (offered), the rest
    // are disallowed (candidates for navigation only).
    void score(const void* query, State* state, Heap* results, size_t allowed_count) const {
        const std::vector<tableint>& ids = state->to_score;
        const size_t n = ids.size();
        for (size_t i = 0; i < std::min(kAhead, n); i++) {
            prefetch_vector(ids[i]);
        }
        for (size_t i = 0; i < n; i++) {
            if (i + kAhead < n) {
                prefetch_vector(ids[i + kAhead]);
            }
            const float d = distance_(query, vector_of(ids[i]), param_);
            if (i < allowed_count) {
                offer(state, results, d, ids[i]);
            } else if (results->size() < state->ef || d < state->lower) {
                state->candidates.emplace(-d, ids[i]);
            }
        }
        state->expansions++;
        state->distances += n;
    }

    void expand(const void* query, State* state, Heap* results, tableint node) const {
        Bits& visited = state->visited;
        std::vector<tableint>& to_score = state->to_score;
        std::vector<tableint>& explore = state->explore;
        to_score.clear();
        explore.clear();
        size_t seen = 0;  // allowed nodes around `node`, visited or not
        size_t size;
        const tableint* links = links0(node, &size);
        for (size_t j = 0; j < size; j++) {
            const tableint n = links[j];
            const bool ok = allowed(n);
            seen += ok;
            if (visited.test(n)) {
                continue;
            }
            if (ok) {
                visited.set(n);
                to_score.push_back(n);
            } else {
                explore.push_back(n);
            }
        }
        const size_t allowed_count = to_score.size();
        const size_t first_hop = explore.size();
        if (first_hop == 0 || allowed_count >= cap_) {
            score(query, state, results, allowed_count);
            return;
        }
        if (static_cast<double>(seen) >= sweep_density_ * static_cast<double>(size)) {
            for (tableint e : explore) {
                visited.set(e);
                to_score.push_back(e);
            }
            score(query, state, results, allowed_count);
            return;
        }
        for (tableint e : explore) {
            prefetch_list(e);
        }
        const size_t budget = std::max(first_hop, budget_);
        size_t collected = allowed_count;
        for (size_t at = 0; at < explore.size() && collected < cap_; at++) {
            if (at >= first_hop && seen >= min_seen_) {
                break;  // three hops and more only while allowed nodes are sparse here
            }
            const tableint e = explore[at];
            if (visited.test(e)) {
                continue;  // queued twice, read already
            }
            size_t size2;
            const tableint* links2 = links0(e, &size2);
            state->lists++;
            bool complete = true;
            for (size_t j = 0; j < size2; j++) {
                const tableint n = links2[j];
                const bool ok = allowed(n);
                seen += ok;
                if (visited.test(n)) {
                    continue;
                }
                if (ok) {
                    visited.set(n);
                    to_score.push_back(n);
                    if (++collected >= cap_) {
                        complete = j + 1 == size2;
                        break;
                    }
                } else if (seen < min_seen_ && explore.size() < budget) {
                    prefetch_list(n);
                    explore.push_back(n);
                }
            }
            if (complete) {
                visited.set(e);
            }
        }
        score(query, state, results, to_score.size());
    }

    // Up to seed_batch_ unvisited allowed live labels from *cursor on, scored and offered; false
    // when the mask is exhausted.
    bool reseed(const void* query, State* state, Heap* results, size_t* cursor) const {
        size_t added = 0;
        while (*cursor < mask_size_ && added < seed_batch_) {
            const size_t label = (*cursor)++;
            if (!mask_[label]) {
                continue;
            }
            tableint id;
            if (!internal_id(label, &id) || state->visited.test(id)) {
                continue;
            }
            state->visited.set(id);
            if (alg_.num_deleted_ != 0 && alg_.isMarkedDeleted(id)) {
                continue;
            }
            offer(state, results, distance_(query, vector_of(id), param_), id);
            added++;
        }
        state->seeds += added;
        return added > 0;
    }

    bool internal_id(size_t label, tableint* id) const {
        if (tables_.identity) {
            if (label >= count_) {
                return false;
            }
            *id = static_cast<tableint>(label);
            return true;
        }
        if (!tables_.internal_of.empty()) {
            if (label >= tables_.internal_of.size() || tables_.internal_of[label] == kAbsent) {
                return false;
            }
            *id = tables_.internal_of[label];
            return true;
        }
        std::unique_lock<std::mutex> lock(alg_.label_lookup_lock);
        auto found = alg_.label_lookup_.find(static_cast<labeltype>(label));
        if (found == alg_.label_lookup_.end()) {
            return false;
        }
        *id = found->second;
        return true;
    }

    const Hnsw& alg_;
    const uint8_t* mask_;
    size_t mask_size_;
    const LabelTables& tables_;
    const uint32_t* label_of_;
    const tableint* links_;
    size_t links_stride_;
    size_t count_;
    const char* base_;
    size_t stride_;
    size_t data_offset_;
    size_t data_size_;
    hnswlib::DISTFUNC<float> distance_;
    void* param_;
    size_t cap_;
    size_t min_seen_;
    size_t budget_;
    double sweep_density_;
    size_t seed_batch_;
};


// Transparent huge pages for hnswlib's level-0 block (vectors and level-0 links of every node,
// 1.7 KB a node at 384-d: 170 MB at 100k). A search reads a few thousand nodes scattered over it,
// nearly each one a TLB miss with 4 KB pages; with 2 MB pages the whole block fits the TLB.
// Measured at 100k MiniLM rows, one thread: 9-15% less time for unfiltered, sweep, ACORN and
// exact searches. Linux only; a no-op elsewhere, when THP is "never", when the block is under
// 4 MB, or with VS_NATIVE_HUGEPAGES=0. Where THP is "madvise" (the common default) the block must
// be advised before its pages are first touched, so a block hnswlib already filled (load_index)
// is copied into a fresh advised one, 16 MB at a time, each copied part of the old block released
// at once (~60 ms at 170 MB, 16 MB above the block's size at the peak). The layout, the file
// format are unchanged; the block is an anonymous mapping of our own (g_mapped), released by
// release_level0 and grown by grow_index with mremap (no copy: searches wait for the growth).
bool huge_pages_wanted(size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr size_t kHuge = size_t{2} << 20;
    if (bytes < 2 * kHuge) {
        return false;
    }
    const char* env = std::getenv("VS_NATIVE_HUGEPAGES");
    if (env != nullptr && std::string(env) == "0") {
        return false;
    }
    static const bool enabled = [] {
        std::ifstream file("/sys/kernel/mm/transparent_hugepage/enabled");
        std::string line;
        return static_cast<bool>(std::getline(file, line)) && line.find("[never]") == std::string::npos;
    }();
    return enabled;
#else
    (void)bytes;
    return false;
#endif
}

#if defined(__linux__)
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A read-write anonymous mapping of at least `bytes` (whole 2 MB pages, so one madvise covers it
// and it stays one VMA, which mremap needs; *length set) starting on a 2 MB boundary, or nullptr.
// `prot` PROT_NONE reserves the range only.
char* map_aligned(size_t bytes, size_t* length, int prot = PROT_READ | PROT_WRITE) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t want = round_up(bytes, kHuge);
    void* raw = mmap(nullptr, want + kHuge, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        return nullptr;
    }
    const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
    const uintptr_t start = round_up(begin, kHuge);
    const uintptr_t end = begin + want + kHuge;
    if (start > begin) {
        munmap(raw, start - begin);
    }
    if (end > start + want) {
        munmap(reinterpret_cast<void*>(start + want), end - (start + want));
    }
    *length = want;
    return reinterpret_cast<char*>(start);
}

// Grows the mapped level-0 block `old` (length `old_length`, from map_aligned) to at least
// `bytes`: in place when the range after it is free, else its pages move (mremap) to a new 2 MB
// boundary, so huge pages stay whole; nothing is copied. The new block, or nullptr (`old`
// unchanged).
char* grow_mapped(char* old, size_t old_length, size_t bytes) {
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t want = round_up(bytes, kHuge);
    if (want <= old_length) {
        return old;
    }
    // Forget `old` before its range may be freed: another index mapping a block in the range
    // the move frees must not have its record erased by ours afterwards.
    set_mapped(old, 0);
    char* grown = nullptr;
    void* same = mremap(old, old_length, want, 0);
    if (same != MAP_FAILED) {
        grown = old;
    } else {
        size_t reserved = 0;
        char* target = map_aligned(want, &reserved, PROT_NONE);
        void* moved = target == nullptr
                          ? MAP_FAILED
                          : mremap(old, old_length, want, MREMAP_MAYMOVE | MREMAP_FIXED, target);
        if (moved == MAP_FAILED) {
            // `old` is intact. The reservation is left (address space only, no memory): the
            // kernel may already have unmapped it, and another mapping may sit there now.
            set_mapped(old, old_length);
            return nullptr;
        }
        grown = static_cast<char*>(moved);
    }
    set_mapped(grown, want);
    madvise(grown, want, MADV_HUGEPAGE);
    return grown;
}
#endif

// Replaces alg.data_level0_memory_ by a 2 MB-aligned block advised for huge pages, sized for
// alg.max_elements_; copies the first `used` bytes (0 for a fresh index: nothing to copy, nothing
// touched). False (nothing changed) where huge pages are not wanted or the block cannot be had.
bool move_level0_to_huge_pages(Hnsw& alg, size_t used) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const size_t bytes = alg.max_elements_ * alg.size_data_per_element_;
    if (!huge_pages_wanted(bytes)) {
        return false;
    }
    constexpr size_t kHuge = size_t{2} << 20;
    size_t length = 0;
    char* block = map_aligned(bytes, &length);
    if (block == nullptr) {
        return false;  // keep hnswlib's block
    }
    madvise(block, length, MADV_HUGEPAGE);
    char* old = alg.data_level0_memory_;
    constexpr size_t kChunk = size_t{16} << 20;
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    for (size_t at = 0; at < used; at += kChunk) {
        const size_t n = std::min(kChunk, used - at);
        std::memcpy(static_cast<char*>(block) + at, old + at, n);
        const uintptr_t from = (reinterpret_cast<uintptr_t>(old + at) + page - 1) & ~(page - 1);
        const uintptr_t to = reinterpret_cast<uintptr_t>(old + at + n) & ~(page - 1);
        if (to > from) {
            madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);  // freed below anyway
        }
    }
    set_mapped(block, length);
    alg.data_level0_memory_ = block;
    release_level0(old);
    return true;
#else
    (void)alg;
    (void)used;
    return false;
#endif
}

// hnswlib's resizeIndex, except for the level-0 block (the vectors and level-0 links: nearly all
// of the index): a mapping of ours (huge pages) grows in place or has its pages moved by mremap,
// nothing copied (~8 ms at 100k x 384 against 35-200 ms for a copy: searches wait meanwhile);
// hnswlib's own block moves to such a mapping 16 MB at a time, each copied part of the old one
// released (move_level0_to_huge_pages), so growing costs 16 MB above the new size, not the old
// size again (glibc's realloc of an aligned block copies it whole). Plain realloc where huge
// pages are not used. The caller excludes every other use of the index.
void grow_index(Hnsw& alg, size_t new_max_elements) {
    if (new_max_elements < alg.cur_element_count) {
        throw std::runtime_error("Cannot resize, max element is less than the current number of elements");
    }
    const size_t old_max = alg.max_elements_;
    alg.max_elements_ = new_max_elements;
    bool grown = false;
#if defined(__linux__)
    const size_t mapped = mapped_length(alg.data_level0_memory_);
    if (mapped != 0) {
        char* block = grow_mapped(alg.data_level0_memory_, mapped, new_max_elements * alg.size_data_per_element_);
        if (block != nullptr) {
            alg.data_level0_memory_ = block;
            grown = true;
        }
    }
#endif
    if (!grown && !move_level0_to_huge_pages(alg, alg.cur_element_count * alg.size_data_per_element_)) {
        if (mapped_length(alg.data_level0_memory_) != 0) {  // ours: realloc() must not touch it
            alg.max_elements_ = old_max;
            throw std::runtime_error("Not enough memory: resizeIndex failed to grow the base layer");
        }
        char* level0 = static_cast<char*>(realloc(alg.data_level0_memory_, new_max_elements * alg.size_data_per_element_));
        if (level0 == nullptr) {
            alg.max_elements_ = old_max;
            throw std::runtime_error("Not enough memory: resizeIndex failed to allocate base layer");
        }
        alg.data_level0_memory_ = level0;
    }
    char** links = static_cast<char**>(realloc(alg.linkLists_, sizeof(void*) * new_max_elements));
    if (links == nullptr) {
        alg.max_elements_ = old_max;  // the level-0 block may be larger: harmless
        throw std::runtime_error("Not enough memory: resizeIndex failed to allocate other layers");
    }
    alg.linkLists_ = links;
    alg.visited_list_pool_.reset(new hnswlib::VisitedListPool(1, new_max_elements));
    alg.element_levels_.resize(new_max_elements);
    std::vector<std::mutex>(new_max_elements).swap(alg.link_list_locks_);
}

// int8 scalar quantization (issue #19, Index.set_int8): a vector x (after normalisation) is
// stored as dim codes u_i = round((x_i - lo_i) / scale) clamped to 0..255 (one global scale, a
// per-dimension offset lo_i) followed by the float t = sum_i lo_i * u_i: dim + 4 bytes instead of
// 4 * dim. x_i decodes to lo_i + scale * u_i, so the distances over codes are integer sums, which
// the compiler vectorises:
//   l2: scale^2 * sum (u_i - v_i)^2
//   ip: 1 - (sum lo_i^2 + scale * (t_u + t_v) + scale^2 * sum u_i v_i)
// Queries are encoded the same way (hnswlib calls one distance for queries and stored vectors);
// the shard re-scores the best candidates with the float32 rows it keeps on disk.
struct Int8Params {
    size_t dim;  // first, as hnswlib's own spaces (getDataByLabel reads it; not used here)
    float scale;
    float scale2;
    float lo2;
};

float int8_l2(const void* a, const void* b, const void* param) {
    const auto* p = static_cast<const Int8Params*>(param);
    const auto* x = static_cast<const uint8_t*>(a);
    const auto* y = static_cast<const uint8_t*>(b);
    const size_t dim = p->dim;
    int32_t sum = 0;  // dim <= 16384: at most 16384 * 255^2 < 2^31
    for (size_t i = 0; i < dim; i++) {
        const int32_t d = static_cast<int32_t>(x[i]) - static_cast<int32_t>(y[i]);
        sum += d * d;
    }
    return p->scale2 * static_cast<float>(sum);
}

float int8_ip(const void* a, const void* b, const void* param) {
    const auto* p = static_cast<const Int8Params*>(param);
    const auto* x = static_cast<const uint8_t*>(a);
    const auto* y = static_cast<const uint8_t*>(b);
    const size_t dim = p->dim;
    int32_t sum = 0;
    for (size_t i = 0; i < dim; i++) {
        sum += static_cast<int32_t>(x[i]) * static_cast<int32_t>(y[i]);
    }
    float tx, ty;
    std::memcpy(&tx, x + dim, sizeof(float));
    std::memcpy(&ty, y + dim, sizeof(float));
    return 1.0f - (p->lo2 + p->scale * (tx + ty) + p->scale2 * static_cast<float>(sum));
}

class Int8Space : public hnswlib::SpaceInterface<float> {
 public:
    Int8Space(size_t dim, float scale, float lo2, bool inner_product)
        : params_{dim, scale, scale * scale, lo2}, fn_(inner_product ? int8_ip : int8_l2) {}
    size_t get_data_size() override { return params_.dim + sizeof(float); }
    hnswlib::DISTFUNC<float> get_dist_func() override { return fn_; }
    void* get_dist_func_param() override { return &params_; }

 private:
    Int8Params params_;
    hnswlib::DISTFUNC<float> fn_;
};

// Readers announce themselves; one closer at a time raises the flag, then waits until no reader
// is announced. A reader that finds the gate closed is not admitted (try_enter) or waits until it
// opens (enter). Counters rather than a std::shared_mutex: glibc's rwlock prefers readers, and
// searches overlapping back to back would keep a closer waiting for ever. Every wait here must be
// made with the GIL released.
class Gate {
 public:
    bool try_enter() {
        readers_.fetch_add(1);
        if (closed_.load()) {
            readers_.fetch_sub(1);
            return false;
        }
        return true;
    }
    void enter() {
        while (!try_enter()) {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
    }
    void leave() { readers_.fetch_sub(1); }
    void close() {
        while (closed_.exchange(true)) {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
        while (readers_.load() != 0) {
            std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
    }
    void open() { closed_.store(false); }

 private:
    std::atomic<int> readers_{0};
    std::atomic<bool> closed_{false};
};

// Holds a gate as a reader for a scope (entered by the caller; released here).
class GateReader {
 public:
    GateReader() = default;
    explicit GateReader(Gate* gate) : gate_(gate) {}
    GateReader(const GateReader&) = delete;
    GateReader& operator=(const GateReader&) = delete;
    ~GateReader() { release(); }
    void hold(Gate* gate) {
        release();
        gate_ = gate;
    }
    void release() {
        if (gate_ != nullptr) {
            gate_->leave();
            gate_ = nullptr;
        }
    }

 private:
    Gate* gate_ = nullptr;
};

// Holds a gate closed for a scope.
class GateCloser {
 public:
    explicit GateCloser(Gate* gate) : gate_(gate) { gate_->close(); }
    GateCloser(const GateCloser&) = delete;
    GateCloser& operator=(const GateCloser&) = delete;
    ~GateCloser() { gate_->open(); }

 private:
    Gate* gate_;
};

// Opens a gate (closed by the caller) at the end of a scope.
class GateOpener {
 public:
    explicit GateOpener(Gate* gate) : gate_(gate) {}
    GateOpener(const GateOpener&) = delete;
    GateOpener& operator=(const GateOpener&) = delete;
    ~GateOpener() { gate_->open(); }

 private:
    Gate* gate_;
};

// A label is returned iff label < limit, and (with a base filter) the filter allows it.
class LimitFilter : public hnswlib::BaseFilterFunctor {
 public:
    LimitFilter(size_t limit, hnswlib::BaseFilterFunctor* base) : limit_(limit), base_(base) {}
    bool operator()(labeltype label) override { return label < limit_ && (base_ == nullptr || (*base_)(label)); }

 private:
    size_t limit_;
    hnswlib::BaseFilterFunctor* base_;
};

// Queries answered by live_search since the last _live_searches() call (tests, benchmarks).
std::atomic<uint64_t> g_live_searches{0};
// Benchmarks only (_vsnative._force_live_search): every knn_query takes live_search.
std::atomic<bool> g_force_live{false};

// Graph search safe while add_items inserts into the same index (hnswlib's own searchKnn reads
// link lists without locks, which addPoint rewrites). Our own code, hnswlib's algorithm:
//   - every link list is copied under its node's link_list_locks_ entry (addPoint updates a list
//     only under that lock);
//   - only nodes with internal id < `complete` are read: their insertion had ended when that
//     count was published (after the add_items call that added them returned). A newer node may
//     already appear in an older node's list; it is skipped, never locked (addPoint holds the new
//     node's own lock for its whole insertion);
//   - the descent starts at the entry point published with `complete` (an older entry point is a
//     valid node of at least its published level);
//   - a node enters the results iff it is not marked deleted and `filter` allows its label.
// Returns up to k (distance, label) pairs, as searchKnn.
std::priority_queue<std::pair<float, labeltype>> live_search(const Hnsw& alg, const void* query, size_t k,
                                                             size_t ef, size_t complete, tableint entry,
                                                             int entry_level, hnswlib::BaseFilterFunctor* filter) {
    using Pair = std::pair<float, tableint>;
    using Heap = std::priority_queue<Pair, std::vector<Pair>, Hnsw::CompareByFirst>;
    std::priority_queue<std::pair<float, labeltype>> result;
    g_live_searches.fetch_add(1, std::memory_order_relaxed);
    if (complete == 0 || entry_level < 0 || entry >= complete) {
        return result;
    }
    auto& locks = const_cast<Hnsw&>(alg).link_list_locks_;
    std::vector<tableint> list(std::max(alg.maxM0_, alg.maxM_) + 1);
    auto copy_list = [&](tableint id, int level) -> size_t {
        std::lock_guard<std::mutex> lock(locks[id]);
        const hnswlib::linklistsizeint* ll = level == 0 ? alg.get_linklist0(id) : alg.get_linklist(id, level);
        const size_t n = std::min<size_t>(alg.getListCount(const_cast<hnswlib::linklistsizeint*>(ll)), list.size());
        std::memcpy(list.data(), ll + 1, n * sizeof(tableint));
        return n;
    };
    auto distance = [&](tableint id) { return alg.fstdistfunc_(query, alg.getDataByInternalId(id), alg.dist_func_param_); };
    auto admitted = [&](tableint id) {
        return !alg.isMarkedDeleted(id) && (filter == nullptr || (*filter)(alg.getExternalLabel(id)));
    };

    tableint current = entry;
    float current_dist = distance(current);
    for (int level = entry_level; level > 0; level--) {
        bool changed = true;
        while (changed) {
            changed = false;
            const size_t n = copy_list(current, level);
            for (size_t i = 0; i < n; i++) {
                const tableint candidate = list[i];
                if (candidate >= complete) {
                    continue;
                }
                const float d = distance(candidate);
                if (d < current_dist) {
                    current_dist = d;
                    current = candidate;
                    changed = true;
                }
            }
        }
    }

    hnswlib::VisitedList* visited = alg.visited_list_pool_->getFreeVisitedList();
    hnswlib::vl_type* marks = visited->mass;
    const hnswlib::vl_type tag = visited->curV;
    Heap top;         // max-heap by distance: the ef best admitted
    Heap candidates;  // (-distance, id): top = nearest
    float lower = std::numeric_limits<float>::max();
    if (admitted(current)) {
        lower = current_dist;
        top.emplace(current_dist, current);
    }
    candidates.emplace(-current_dist, current);
    marks[current] = tag;
    while (!candidates.empty()) {
        const Pair next = candidates.top();
        if (-next.first > lower && top.size() == ef) {
            break;
        }
        candidates.pop();
        const size_t n = copy_list(next.second, 0);
#ifdef USE_SSE
        if (n > 0 && list[0] < complete) {
            _mm_prefetch(reinterpret_cast<const char*>(marks + list[0]), _MM_HINT_T0);
            _mm_prefetch(alg.getDataByInternalId(list[0]), _MM_HINT_T0);
        }
#endif
        for (size_t i = 0; i < n; i++) {
            const tableint candidate = list[i];
#ifdef USE_SSE
            if (i + 1 < n && list[i + 1] < complete) {  // as hnswlib: the next one's mark and vector
                _mm_prefetch(reinterpret_cast<const char*>(marks + list[i + 1]), _MM_HINT_T0);
                _mm_prefetch(alg.getDataByInternalId(list[i + 1]), _MM_HINT_T0);
            }
#endif
            if (candidate >= complete || marks[candidate] == tag) {
                continue;
            }
            marks[candidate] = tag;
            const float d = distance(candidate);
            if (top.size() < ef || lower > d) {
                candidates.emplace(-d, candidate);
                if (admitted(candidate)) {
                    top.emplace(d, candidate);
                }
                while (top.size() > ef) {
                    top.pop();
                }
                if (!top.empty()) {
                    lower = top.top().first;
                }
            }
        }
    }
    alg.visited_list_pool_->releaseVisitedList(visited);
    while (top.size() > k) {
        top.pop();
    }
    while (!top.empty()) {
        result.emplace(top.top().first, alg.getExternalLabel(top.top().second));
        top.pop();
    }
    return result;
}

class Index {
 public:
    Index(const std::string& space, int dim) : space_name_(space), dim_(dim) {
        if (dim <= 0) {
            throw std::invalid_argument("dim must be positive");
        }
        if (space == "l2") {
            space_ = std::make_unique<hnswlib::L2Space>(dim);
        } else if (space == "ip") {
            space_ = std::make_unique<hnswlib::InnerProductSpace>(dim);
        } else if (space == "cosine") {
            space_ = std::make_unique<hnswlib::InnerProductSpace>(dim);
            normalize_ = true;
        } else {
            throw std::runtime_error("Space name must be one of l2, ip, or cosine.");
        }
        num_threads_default_ = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    }

    // Switches the index to int8 codes (see Int8Space) with per-dimension offsets `lo` (float32
    // [dim]) and `scale` (> 0, finite): before init_index or load_index only (a loaded file must
    // have been written with the same parameters: its records are not checked). Spaces l2, ip
    // and cosine (cosine normalises first, as always).
    void set_int8(const py::object& lo_in, float scale) {
        if (alg_) {
            throw std::runtime_error("set_int8 must be called before init_index or load_index");
        }
        py::array_t<float, py::array::c_style | py::array::forcecast> lo(lo_in);
        if (lo.ndim() != 1 || lo.shape(0) != dim_) {
            throw std::invalid_argument("set_int8: lo must be a 1-D array of dim values");
        }
        if (!(scale > 0.0f) || !std::isfinite(scale)) {
            throw std::invalid_argument("set_int8: scale must be positive and finite");
        }
        lo_.assign(lo.data(), lo.data() + dim_);
        double lo2 = 0.0;
        for (float v : lo_) {
            if (!std::isfinite(v)) {
                throw std::invalid_argument("set_int8: lo must be finite");
            }
            lo2 += static_cast<double>(v) * v;
        }
        scale_ = scale;
        space_ = std::make_unique<Int8Space>(static_cast<size_t>(dim_), scale, static_cast<float>(lo2),
                                             space_name_ != "l2");
        int8_ = true;
    }

    bool int8() const { return int8_; }

    // ---- construction, persistence ---------------------------------------------------------

    void init_index(size_t max_elements, size_t M, size_t ef_construction, size_t random_seed,
                    bool allow_replace_deleted) {
        if (alg_) {
            throw std::runtime_error("The index is already initiated.");
        }
        alg_ = std::make_unique<Hnsw>(space_.get(), max_elements, M, ef_construction, random_seed,
                                      allow_replace_deleted);
        move_level0_to_huge_pages(*alg_, 0);
        alg_->ef_ = default_ef_;
        cur_l_ = 0;
        ep_added_ = false;
        invalidate_table();
        publish_complete(*alg_);
    }

    void load_index(const std::string& path, size_t max_elements, bool allow_replace_deleted) {
        std::unique_ptr<Hnsw> loaded;
        {
            py::gil_scoped_release release;
            loaded = std::make_unique<Hnsw>(space_.get(), path, false, max_elements, allow_replace_deleted);
            move_level0_to_huge_pages(*loaded, loaded->cur_element_count * loaded->size_data_per_element_);
        }
        std::unique_lock<std::mutex> adding(add_mutex_, std::defer_lock);
        {
            py::gil_scoped_release release;
            adding.lock();
            resize_gate_.close();
        }
        GateOpener opened(&resize_gate_);
        alg_ = std::move(loaded);
        cur_l_ = alg_->cur_element_count;
        ep_added_ = alg_->cur_element_count > 0;
        invalidate_table();
        publish_complete(*alg_);
    }

    // Makes this uninitialised index an independent copy of `other` with room for
    // `max_elements` (at least other's element count), as if `other` had been saved and loaded
    // back (hnswlib's loadIndex, field by field, without the file): same records, links, labels
    // and deleted marks; level generators freshly constructed, as loadIndex leaves them. The two
    // indexes must have the same space, dim and int8 parameters (std::invalid_argument).
    // `other` may be searched concurrently; it must not be mutated meanwhile.
    void copy_from(const Index& other, size_t max_elements) {
        if (alg_) {
            throw std::runtime_error("copy_from needs an index before init_index or load_index");
        }
        const Hnsw& src = other.inited_const();
        std::unique_lock<std::mutex> other_adding(other.add_mutex_, std::defer_lock);
        GateReader other_structure;
        {
            py::gil_scoped_release release;
            other_adding.lock();  // a copy of a settled index: no insertion half done
            other.resize_gate_.enter();
            other_structure.hold(&other.resize_gate_);
        }
        if (other.dim_ != dim_ || other.space_name_ != space_name_ || other.int8_ != int8_ ||
            (int8_ && (other.scale_ != scale_ || other.lo_ != lo_))) {
            throw std::invalid_argument("copy_from: the indexes differ in space, dim or int8 parameters");
        }
        std::unique_ptr<Hnsw> copy;
        {
            py::gil_scoped_release release;
            copy = copy_alg(src, max_elements);
        }
        alg_ = std::move(copy);
        alg_->ef_ = other.alg_->ef_;
        cur_l_ = alg_->cur_element_count;
        ep_added_ = alg_->cur_element_count > 0;
        invalidate_table();
        publish_complete(*alg_);
    }

    // Waits for an add_items in progress (the file holds whole insertions only).
    void save_index(const std::string& path) {
        Hnsw& alg = inited();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> adding(add_mutex_);
        resize_gate_.enter();
        GateReader structure(&resize_gate_);
        alg.saveIndex(path);
    }

    // ---- mutation ----------------------------------------------------------------------------

    void add_items(const py::object& input, const py::object& ids_in, int num_threads, bool replace_deleted) {
        Hnsw& alg = inited();
        FloatArray items(input);
        auto buffer = items.request();
        size_t rows, features;
        input_shape(buffer, &rows, &features);
        if (features != static_cast<size_t>(dim_)) {
            throw std::runtime_error("Wrong dimensionality of the vectors");
        }
        std::vector<size_t> ids = labels_for(ids_in, rows);
        if (num_threads <= 0) {
            num_threads = num_threads_default_;
        }
        if (rows <= static_cast<size_t>(num_threads) * 4) {
            num_threads = 1;
        }
        // One add_items at a time; hnswlib's own searches (the fast path of knn_query and
        // exact_query's label tables) are drained first and switch to live_search until the
        // inserted nodes are published as complete.
        std::unique_lock<std::mutex> adding(add_mutex_, std::defer_lock);
        GateReader structure;
        {
            py::gil_scoped_release release;
            adding.lock();
            resize_gate_.enter();
            structure.hold(&resize_gate_);
            fast_gate_.close();
        }
        GateOpener fast_reopened(&fast_gate_);
        struct Publish {
            Index* self;
            Hnsw* alg;
            ~Publish() {
                self->invalidate_table();
                self->publish_complete(*alg);
            }
        } publish{this, &alg};
        invalidate_table();
        size_t start = 0;
        if (!ep_added_ && rows > 0) {
            // The first point alone, so that concurrent inserts find an entry point.
            std::vector<float> norm(dim_);
            std::vector<uint8_t> code(code_size());
            const float* vector = items.data(0);
            if (normalize_) {
                normalize_vector(vector, norm.data());
                vector = norm.data();
            }
            alg.addPoint(encode(vector, code.data()), ids.empty() ? cur_l_ : ids[0], replace_deleted);
            start = 1;
            ep_added_ = true;
        }
        {
            py::gil_scoped_release release;
            std::vector<float> norm(normalize_ ? static_cast<size_t>(num_threads) * dim_ : 0);
            std::vector<uint8_t> codes(static_cast<size_t>(num_threads) * code_size());
            parallel_for(start, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* vector = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(vector, out);
                    vector = out;
                }
                const void* stored = encode(vector, codes.data() + thread_id * code_size());
                alg.addPoint(stored, ids.empty() ? cur_l_ + row : ids[row], replace_deleted);
            });
        }
        cur_l_ += rows;
    }

    // Safe beside searches and add_items in practice: the deleted mark is its own byte of the
    // node's level-0 list header (hnswlib's count is the two bytes before it), read by searches
    // as either value; hnswlib's markDelete takes its label lock.
    void mark_deleted(size_t label) {
        Hnsw& alg = inited();
        GateReader structure(enter_released(&resize_gate_));
        alg.markDelete(label);
    }

    void unmark_deleted(size_t label) {
        Hnsw& alg = inited();
        GateReader structure(enter_released(&resize_gate_));
        alg.unmarkDelete(label);
    }

    // Room for `new_size` elements (at least the element count). Waits for an add_items in
    // progress and for every search in flight; searches and calls that arrive meanwhile wait
    // for it (grow_index: a mapped level-0 block grows by mremap, else it is copied).
    void resize_index(size_t new_size) {
        Hnsw& alg = inited();
        py::gil_scoped_release release;
        std::lock_guard<std::mutex> adding(add_mutex_);
        GateCloser closed(&resize_gate_);
        grow_index(alg, new_size);
        invalidate_table();
    }

    void set_ef(size_t ef) {
        default_ef_ = ef;
        if (alg_) {
            alg_->ef_ = ef;
        }
    }

    // ---- reads -------------------------------------------------------------------------------

    py::object get_items(const py::object& ids_in, const std::string& return_type) {
        if (return_type != "numpy" && return_type != "list") {
            throw std::invalid_argument("return_type should be \"numpy\" or \"list\"");
        }
        Hnsw& alg = inited();
        if (int8_) {  // decoded codes (hnswlib's getDataByLabel reads float32 records)
            py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels(ids_in);
            py::array_t<float> rows = gather(labels);
            if (return_type == "list") {
                return rows.attr("tolist")();
            }
            return std::move(rows);
        }
        GateReader structure(enter_released(&resize_gate_));
        std::vector<size_t> ids;
        if (!ids_in.is_none()) {
            py::array_t<size_t, py::array::c_style | py::array::forcecast> items(ids_in);
            if (items.ndim() == 0) {
                throw std::invalid_argument("get_items accepts a list of indices and returns a list of vectors");
            }
            ids.assign(items.data(), items.data() + items.shape(0));
        }
        py::array_t<float> out({ids.size(), static_cast<size_t>(dim_)});
        float* dst = out.mutable_data();
        for (size_t i = 0; i < ids.size(); i++) {
            std::vector<float> row = alg.getDataByLabel<float>(ids[i]);  // "Label not found" if deleted
            std::memcpy(dst + i * dim_, row.data(), sizeof(float) * dim_);
        }
        if (return_type == "list") {
            return out.attr("tolist")();
        }
        return std::move(out);
    }

    // The stored vectors of `labels` (int64, each live) as a float32 [n, dim] array, copied
    // straight from the level-0 block under hnswlib's label lock, taken once for the batch
    // (get_items takes two locks and allocates a vector per label: ~5 us a row; this is a
    // memcpy). Raises RuntimeError for a label absent or marked deleted, as get_items does.
    // Like the searches, safe concurrently with searches, not with add_items.
    py::array_t<float> gather(const py::object& labels_in) {
        Hnsw& alg = inited();
        py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels(labels_in);
        if (labels.ndim() != 1) {
            throw std::invalid_argument("gather takes a 1-D array of labels");
        }
        const size_t n = static_cast<size_t>(labels.shape(0));
        py::array_t<float> out({n, static_cast<size_t>(dim_)});
        float* dst = out.mutable_data();
        const int64_t* src = labels.data();
        bool missing = false;
        {
            py::gil_scoped_release release;
            resize_gate_.enter();
            GateReader structure(&resize_gate_);
            std::unique_lock<std::mutex> lock(alg.label_lookup_lock);
            for (size_t i = 0; i < n && !missing; i++) {
                auto found = src[i] < 0 ? alg.label_lookup_.end()
                                        : alg.label_lookup_.find(static_cast<labeltype>(src[i]));
                if (found == alg.label_lookup_.end() || alg.isMarkedDeleted(found->second)) {
                    missing = true;
                    break;
                }
                const char* record = alg.getDataByInternalId(found->second);
                if (int8_) {
                    decode(reinterpret_cast<const uint8_t*>(record), dst + i * dim_);
                } else {
                    std::memcpy(dst + i * dim_, record, sizeof(float) * dim_);
                }
            }
        }
        if (missing) {
            throw std::runtime_error("Label not found");
        }
        return out;
    }

    std::vector<labeltype> get_ids_list() {
        Hnsw& alg = inited();
        GateReader structure(enter_released(&resize_gate_));
        std::unique_lock<std::mutex> lock(alg.label_lookup_lock);
        std::vector<labeltype> ids;
        ids.reserve(alg.label_lookup_.size());
        for (const auto& kv : alg.label_lookup_) {
            ids.push_back(kv.first);
        }
        return ids;
    }

    // Graph search. Without `allowed`: hnswlib's knn_query exactly (uint64 labels; raises
    // RuntimeError when a row cannot be filled). With `allowed` (1-D bool/uint8 mask): int64
    // labels, rows padded with label -1 and distance +inf when fewer than k allowed are found;
    // strategy "sweep" is hnswlib's filtered searchKnn, "acorn" is AcornSearch (same result
    // contract; max(ef, k) results searched for, the k nearest returned).
    //
    // `limit`: only labels below it are returned (others are still walked through): a graph
    // generation sharing this index with a fold that adds to it passes its own element count.
    // While add_items runs, every search takes live_search (ACORN sweeps instead), which reads the
    // nodes whose insertion had ended when the call started.
    py::tuple knn_query(const py::object& input, size_t k, int num_threads,
                        const std::function<bool(labeltype)>& filter, const py::object& allowed,
                        const std::string& strategy, size_t limit) {
        Hnsw& alg = inited();
        FloatArray items(input);
        auto buffer = items.request();
        size_t rows, features;
        input_shape(buffer, &rows, &features);
        if (features != static_cast<size_t>(dim_)) {
            throw std::runtime_error("Wrong dimensionality of the query vectors");
        }
        if (filter && !allowed.is_none()) {
            throw std::invalid_argument("pass either filter or allowed, not both");
        }
        if (strategy != "sweep" && strategy != "acorn") {
            throw std::invalid_argument("strategy must be \"sweep\" or \"acorn\", got \"" + strategy + "\"");
        }
        if (strategy == "acorn" && allowed.is_none()) {
            throw std::invalid_argument("strategy=\"acorn\" needs allowed=mask");
        }
        GateReader structure;
        GateReader fast_reader;
        bool fast;
        {
            py::gil_scoped_release release;
            resize_gate_.enter();
            structure.hold(&resize_gate_);
            fast = !g_force_live.load(std::memory_order_relaxed) && fast_gate_.try_enter();
            if (fast) {
                fast_reader.hold(&fast_gate_);
            }
        }
        const bool acorn = strategy == "acorn" && fast;
        const bool pad = !allowed.is_none();
        py::array mask_array;
        std::unique_ptr<hnswlib::BaseFilterFunctor> functor;
        std::unique_ptr<AcornSearch> acorn_search;
        if (pad) {
            mask_array = checked_mask(allowed);
            const auto* mask = static_cast<const uint8_t*>(mask_array.data());
            const auto mask_size = static_cast<size_t>(mask_array.shape(0));
            if (acorn) {
                py::gil_scoped_release release;  // label tables (first search after a mutation), bits
                acorn_search = std::make_unique<AcornSearch>(alg, mask, mask_size, label_tables(alg), compact_links(alg));
            } else {
                functor = std::make_unique<MaskFilter>(mask, mask_size);
            }
        } else if (filter) {
            functor = std::make_unique<CallbackFilter>(filter);
        }
        std::unique_ptr<hnswlib::BaseFilterFunctor> limited;
        if (limit < alg.cur_element_count) {
            limited = std::make_unique<LimitFilter>(limit, functor.get());
        }
        const uint64_t entry = entry_.load();
        const size_t complete = complete_.load();
        if (num_threads <= 0) {
            num_threads = num_threads_default_;
        }
        if (rows <= static_cast<size_t>(num_threads) * 4) {
            num_threads = 1;
        }
        py::array_t<int64_t> labels_signed;
        py::array_t<uint64_t> labels_unsigned;
        void* label_ptr;
        if (pad) {
            labels_signed = py::array_t<int64_t>({rows, k});
            label_ptr = labels_signed.mutable_data();
        } else {
            labels_unsigned = py::array_t<uint64_t>({rows, k});
            label_ptr = labels_unsigned.mutable_data();
        }
        py::array_t<float> distances({rows, k});
        float* dist_out = distances.mutable_data();
        {
            py::gil_scoped_release release;
            std::vector<float> norm(normalize_ ? static_cast<size_t>(num_threads) * dim_ : 0);
            std::vector<uint8_t> codes(static_cast<size_t>(num_threads) * code_size());
            hnswlib::BaseFilterFunctor* isIdAllowed = limited ? limited.get() : functor.get();
            parallel_for(0, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* raw = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(raw, out);
                    raw = out;
                }
                const void* query = encode(raw, codes.data() + thread_id * code_size());
                std::priority_queue<std::pair<float, labeltype>> result;
                if (acorn_search) {
                    auto found_ids = acorn_search->search(query, std::max(alg.ef_, k));
                    while (found_ids.size() > k) {
                        found_ids.pop();
                    }
                    while (!found_ids.empty()) {
                        result.emplace(found_ids.top().first, acorn_search->label(found_ids.top().second));
                        found_ids.pop();
                    }
                } else if (fast) {
                    result = alg.searchKnn(query, k, isIdAllowed);
                } else {
                    result = live_search(alg, query, k, std::max(alg.ef_, k), complete,
                                         static_cast<tableint>(entry & 0xffffffffu),
                                         entry == kNoEntry ? -1 : static_cast<int>(entry >> 32), isIdAllowed);
                }
                size_t found = result.size();
                if (!pad && found != k) {
                    throw std::runtime_error(
                        "Cannot return the results in a contiguous 2D array. Probably ef or M is too small");
                }
                float* d = dist_out + row * k;
                for (size_t i = found; i-- > 0;) {
                    d[i] = result.top().first;
                    if (pad) {
                        static_cast<int64_t*>(label_ptr)[row * k + i] = static_cast<int64_t>(result.top().second);
                    } else {
                        static_cast<uint64_t*>(label_ptr)[row * k + i] = result.top().second;
                    }
                    result.pop();
                }
                for (size_t i = found; i < k; i++) {  // pad only
                    d[i] = std::numeric_limits<float>::infinity();
                    static_cast<int64_t*>(label_ptr)[row * k + i] = -1;
                }
            });
        }
        if (pad) {
            return py::make_tuple(labels_signed, distances);
        }
        return py::make_tuple(labels_unsigned, distances);
    }

    // Exact top-min(k, len(labels)) per query over `labels` (int64; absent, negative and deleted
    // labels skipped), ascending by (distance, label); rows padded with -1 / +inf when fewer
    // labels than that remain after skipping.
    py::tuple exact_query(const py::object& input, const py::object& labels_in, size_t k, int num_threads) {
        Hnsw& alg = inited();
        FloatArray items(input);
        auto buffer = items.request();
        size_t rows, features;
        input_shape(buffer, &rows, &features);
        if (features != static_cast<size_t>(dim_)) {
            throw std::runtime_error("Wrong dimensionality of the query vectors");
        }
        py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels(labels_in);
        if (labels.ndim() != 1) {
            throw std::invalid_argument("labels must be a 1-D integer array");
        }
        const size_t m = static_cast<size_t>(labels.shape(0));
        const size_t kk = std::min(k, m);
        if (num_threads <= 0) {
            num_threads = num_threads_default_;
        }
        num_threads = static_cast<int>(std::max<size_t>(1, std::min<size_t>(num_threads, rows)));
        py::array_t<int64_t> out_labels({rows, kk});
        py::array_t<float> out_dist({rows, kk});
        int64_t* label_out = out_labels.mutable_data();
        float* dist_out = out_dist.mutable_data();
        const int64_t* wanted = labels.data();
        {
            py::gil_scoped_release release;
            resize_gate_.enter();
            GateReader structure(&resize_gate_);
            // (internal id, label) of every live wanted label, in storage order for locality; the
            // label tables only while no add_items runs (they would read half-written nodes).
            std::vector<std::pair<tableint, int64_t>> targets;
            targets.reserve(m);
            const bool settled = fast_gate_.try_enter();
            GateReader fast_reader(settled ? &fast_gate_ : nullptr);
            resolve(alg, wanted, m, &targets, settled);
            fast_reader.release();
            std::sort(targets.begin(), targets.end());
            std::vector<float> norm(normalize_ ? static_cast<size_t>(num_threads) * dim_ : 0);
            std::vector<uint8_t> codes(static_cast<size_t>(num_threads) * code_size());
            const char* base = alg.data_level0_memory_ + alg.offsetData_;
            const size_t stride = alg.size_data_per_element_;
            auto distance = alg.fstdistfunc_;
            void* param = alg.dist_func_param_;
            parallel_for(0, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* raw = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(raw, out);
                    raw = out;
                }
                const void* query = encode(raw, codes.data() + thread_id * code_size());
                using Entry = std::pair<float, int64_t>;
                std::priority_queue<Entry> heap;  // the kk best so far; top = worst (distance, label)
                const size_t n = targets.size();
                for (size_t j = 0; j < n; j++) {
                    if (j + 4 < n) {
                        __builtin_prefetch(base + targets[j + 4].first * stride);
                    }
                    Entry entry(distance(query, base + targets[j].first * stride, param), targets[j].second);
                    if (heap.size() < kk) {
                        heap.push(entry);
                    } else if (kk > 0 && entry < heap.top()) {
                        heap.pop();
                        heap.push(entry);
                    }
                }
                int64_t* l = label_out + row * kk;
                float* d = dist_out + row * kk;
                size_t found = heap.size();
                for (size_t i = found; i-- > 0;) {
                    d[i] = heap.top().first;
                    l[i] = heap.top().second;
                    heap.pop();
                }
                for (size_t i = found; i < kk; i++) {
                    d[i] = std::numeric_limits<float>::infinity();
                    l[i] = -1;
                }
            });
        }
        return py::make_tuple(out_labels, out_dist);
    }

    // ---- properties --------------------------------------------------------------------------

    const std::string& space() const { return space_name_; }
    int dim() const { return dim_; }
    size_t ef() const { return alg_ ? alg_->ef_ : default_ef_; }
    size_t max_elements() const { return alg_ ? alg_->max_elements_ : 0; }
    size_t element_count() const { return alg_ ? static_cast<size_t>(alg_->cur_element_count) : 0; }
    size_t deleted_count() const { return alg_ ? static_cast<size_t>(alg_->num_deleted_) : 0; }
    size_t ef_construction() const { return alg_ ? alg_->ef_construction_ : 0; }
    size_t M() const { return alg_ ? alg_->M_ : 0; }
    size_t index_file_size() const { return inited_const().indexFileSize(); }
    int num_threads_default_ = 1;

 private:
    Hnsw& inited() {
        if (!alg_) {
            throw std::runtime_error("the index is not initialised: call init_index or load_index first");
        }
        return *alg_;
    }

    const Hnsw& inited_const() const {
        if (!alg_) {
            throw std::runtime_error("the index is not initialised: call init_index or load_index first");
        }
        return *alg_;
    }

    size_t code_size() const { return int8_ ? static_cast<size_t>(dim_) + sizeof(float) : 0; }

    // hnswlib 0.8's loadIndex with `src` in place of the file (see copy_from).
    std::unique_ptr<Hnsw> copy_alg(const Hnsw& src, size_t max_elements_wanted) {
        auto dst = std::make_unique<Hnsw>(space_.get());
        const size_t count = src.cur_element_count;
        const size_t max_elements = std::max(max_elements_wanted, count);
        dst->offsetLevel0_ = src.offsetLevel0_;
        dst->max_elements_ = max_elements;
        // clear() (run by the destructor, also on a failed allocation below) frees linkLists_[i]
        // for i < cur_element_count with a level > 0: only lists already copied count.
        dst->cur_element_count = 0;
        dst->size_data_per_element_ = src.size_data_per_element_;
        dst->label_offset_ = src.label_offset_;
        dst->offsetData_ = src.offsetData_;
        dst->maxlevel_ = src.maxlevel_;
        dst->enterpoint_node_ = src.enterpoint_node_;
        dst->maxM_ = src.maxM_;
        dst->maxM0_ = src.maxM0_;
        dst->M_ = src.M_;
        dst->mult_ = src.mult_;
        dst->ef_construction_ = src.ef_construction_;
        dst->allow_replace_deleted_ = src.allow_replace_deleted_;
        dst->data_size_ = space_->get_data_size();
        dst->fstdistfunc_ = space_->get_dist_func();
        dst->dist_func_param_ = space_->get_dist_func_param();
        dst->data_level0_memory_ = static_cast<char*>(malloc(max_elements * dst->size_data_per_element_));
        if (dst->data_level0_memory_ == nullptr) {
            throw std::bad_alloc();
        }
        move_level0_to_huge_pages(*dst, 0);
        std::memcpy(dst->data_level0_memory_, src.data_level0_memory_, count * src.size_data_per_element_);
        dst->size_links_per_element_ = src.size_links_per_element_;
        dst->size_links_level0_ = src.size_links_level0_;
        std::vector<std::mutex>(max_elements).swap(dst->link_list_locks_);
        std::vector<std::mutex>(Hnsw::MAX_LABEL_OPERATION_LOCKS).swap(dst->label_op_locks_);
        dst->visited_list_pool_.reset(new hnswlib::VisitedListPool(1, max_elements));
        dst->linkLists_ = static_cast<char**>(malloc(sizeof(void*) * max_elements));
        if (dst->linkLists_ == nullptr) {
            throw std::bad_alloc();
        }
        dst->element_levels_ = std::vector<int>(max_elements);
        dst->revSize_ = 1.0 / dst->mult_;
        dst->label_lookup_.reserve(count);
        for (size_t i = 0; i < count; i++) {
            dst->label_lookup_[src.getExternalLabel(static_cast<tableint>(i))] = static_cast<tableint>(i);
            const int level = src.element_levels_[i];
            dst->element_levels_[i] = level;
            dst->linkLists_[i] = nullptr;
            if (level > 0) {
                const size_t bytes = dst->size_links_per_element_ * static_cast<size_t>(level);
                dst->linkLists_[i] = static_cast<char*>(malloc(bytes));
                if (dst->linkLists_[i] == nullptr) {
                    throw std::bad_alloc();
                }
                std::memcpy(dst->linkLists_[i], src.linkLists_[i], bytes);
            }
            dst->cur_element_count = i + 1;
        }
        size_t deleted = 0;
        for (size_t i = 0; i < count; i++) {
            if (dst->isMarkedDeleted(static_cast<tableint>(i))) {
                deleted += 1;
                if (dst->allow_replace_deleted_) {
                    dst->deleted_elements.insert(static_cast<tableint>(i));
                }
            }
        }
        dst->num_deleted_ = deleted;
        return dst;
    }

    // What the index stores for `vector` (already normalised): itself, or its int8 record
    // written into `codes` (code_size() bytes).
    const void* encode(const float* vector, uint8_t* codes) const {
        if (!int8_) {
            return vector;
        }
        const float inv = 1.0f / scale_;
        double t = 0.0;
        for (int i = 0; i < dim_; i++) {
            float q = std::nearbyint((vector[i] - lo_[i]) * inv);
            q = std::isnan(q) ? 0.0f : std::min(255.0f, std::max(0.0f, q));
            const auto u = static_cast<uint8_t>(q);
            codes[i] = u;
            t += static_cast<double>(lo_[i]) * u;
        }
        const auto tf = static_cast<float>(t);
        std::memcpy(codes + dim_, &tf, sizeof(float));
        return codes;
    }

    void decode(const uint8_t* codes, float* out) const {
        for (int i = 0; i < dim_; i++) {
            out[i] = lo_[i] + scale_ * static_cast<float>(codes[i]);
        }
    }

    void normalize_vector(const float* data, float* out) const {
        // As hnswlib's python bindings, so cosine indexes hold the same vectors.
        float norm = 0.0f;
        for (int i = 0; i < dim_; i++) {
            norm += data[i] * data[i];
        }
        norm = 1.0f / (sqrtf(norm) + 1e-30f);
        for (int i = 0; i < dim_; i++) {
            out[i] = data[i] * norm;
        }
    }

    static std::vector<size_t> labels_for(const py::object& ids_in, size_t rows) {
        std::vector<size_t> ids;
        if (ids_in.is_none()) {
            return ids;
        }
        py::array_t<size_t, py::array::c_style | py::array::forcecast> items(ids_in);
        if (!((items.ndim() == 1 && static_cast<size_t>(items.shape(0)) == rows) ||
              (items.ndim() == 0 && rows == 1))) {
            throw std::runtime_error("The input label shape " + std::to_string(items.ndim()) +
                                     " does not match the input data vector shape " + std::to_string(rows));
        }
        ids.assign(items.data(), items.data() + (items.ndim() == 1 ? items.shape(0) : 1));
        return ids;
    }

    static py::array checked_mask(const py::object& allowed) {
        if (!py::isinstance<py::array>(allowed)) {
            throw py::type_error("allowed must be a numpy array of bool or uint8");
        }
        py::array mask = py::reinterpret_borrow<py::array>(allowed);
        const char kind = mask.dtype().kind();
        if (mask.ndim() != 1 || mask.itemsize() != 1 || (kind != 'b' && kind != 'u')) {
            throw py::type_error("allowed must be a 1-D numpy array of bool or uint8");
        }
        if (mask.shape(0) > 1 && mask.strides(0) != 1) {
            throw py::value_error("allowed must be contiguous (use np.ascontiguousarray)");
        }
        return mask;
    }

    // Label -> internal id for exact_query: the dense table when labels are dense (the shard's
    // are 0..n-1); else hnswlib's own label_lookup_ map.
    void resolve(const Hnsw& alg, const int64_t* wanted, size_t m,
                 std::vector<std::pair<tableint, int64_t>>* targets, bool settled) {
        const LabelTables* tables_or_null = settled ? &label_tables(alg) : nullptr;
        if (tables_or_null != nullptr && !tables_or_null->internal_of.empty()) {
            const LabelTables& tables = *tables_or_null;
            const size_t size = tables.internal_of.size();
            for (size_t i = 0; i < m; i++) {
                int64_t label = wanted[i];
                if (label < 0 || static_cast<size_t>(label) >= size) continue;
                tableint internal = tables.internal_of[label];
                if (internal == kAbsent || alg.isMarkedDeleted(internal)) continue;
                targets->emplace_back(internal, label);
            }
            return;
        }
        std::unique_lock<std::mutex> lock(alg.label_lookup_lock);
        for (size_t i = 0; i < m; i++) {
            int64_t label = wanted[i];
            if (label < 0) continue;
            auto found = alg.label_lookup_.find(static_cast<labeltype>(label));
            if (found == alg.label_lookup_.end() || alg.isMarkedDeleted(found->second)) continue;
            targets->emplace_back(found->second, label);
        }
    }

    // Built once after each mutation (add_items, resize_index, load_index invalidate it), by the
    // first search that needs it; searches running together share it.
    const LabelTables& label_tables(const Hnsw& alg) {
        if (!tables_ready_.load(std::memory_order_acquire)) {
            std::lock_guard<std::mutex> guard(table_mutex_);
            if (!tables_ready_.load(std::memory_order_relaxed)) {
                tables_.build(alg);
                tables_ready_.store(true, std::memory_order_release);
            }
        }
        return tables_;
    }

    // The compact level-0 lists for ACORN (CompactLinks), built and invalidated as the tables.
    const CompactLinks& compact_links(const Hnsw& alg) {
        if (!links_ready_.load(std::memory_order_acquire)) {
            std::lock_guard<std::mutex> guard(table_mutex_);
            if (!links_ready_.load(std::memory_order_relaxed)) {
                links_.build(alg);
                links_ready_.store(true, std::memory_order_release);
            }
        }
        return links_;
    }

    void invalidate_table() {
        tables_ready_.store(false, std::memory_order_release);
        links_ready_.store(false, std::memory_order_release);
    }

    // Publishes every node inserted so far as complete, with the entry point (after add_items
    // returns, or a load, copy or init: nothing is being inserted).
    void publish_complete(Hnsw& alg) {
        uint64_t entry = kNoEntry;
        {
            std::lock_guard<std::mutex> lock(alg.global);
            if (alg.cur_element_count > 0 && alg.maxlevel_ >= 0) {
                entry = (static_cast<uint64_t>(static_cast<uint32_t>(alg.maxlevel_)) << 32) | alg.enterpoint_node_;
            }
        }
        complete_.store(alg.cur_element_count);  // before the entry point: a reader loads it second
        entry_.store(entry);
    }

    // Enters `gate` as a reader, waiting with the GIL released if it is closed.
    static Gate* enter_released(Gate* gate) {
        if (!gate->try_enter()) {
            py::gil_scoped_release release;
            gate->enter();
        }
        return gate;
    }

    std::string space_name_;
    int dim_;
    bool normalize_ = false;
    bool int8_ = false;
    std::vector<float> lo_;
    float scale_ = 0.0f;
    size_t default_ef_ = 10;
    bool ep_added_ = true;
    size_t cur_l_ = 0;
    // Declared before alg_, which points into it: destroyed after it.
    std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
    std::unique_ptr<Hnsw> alg_;
    std::mutex table_mutex_;
    std::atomic<bool> tables_ready_{false};
    LabelTables tables_;
    std::atomic<bool> links_ready_{false};
    CompactLinks links_;
    // resize_gate_: entered by every call that reads or inserts; closed by resize_index and
    // load_index. fast_gate_: entered by searches on hnswlib's own (lock-free) paths; closed by
    // add_items. add_mutex_: one add_items at a time; save_index and copy_from wait for it.
    mutable Gate resize_gate_;
    mutable Gate fast_gate_;
    mutable std::mutex add_mutex_;
    std::atomic<size_t> complete_{0};
    std::atomic<uint64_t> entry_{kNoEntry};
};

// Rows ``labels`` of a file of float32 rows of ``dim`` (label-major, no header): one pread per
// row into a new [n, dim] array, the GIL released. RuntimeError on a negative label, a read error
// or a short read (a label past the end of the file).
py::array_t<float> read_rows(int fd, py::array_t<int64_t, py::array::c_style | py::array::forcecast> labels,
                             size_t dim) {
    if (labels.ndim() != 1) throw std::runtime_error("read_rows: labels must be 1-D");
    const ssize_t n = labels.shape(0);
    py::array_t<float> out({n, static_cast<ssize_t>(dim)});
    float* dst = out.mutable_data();
    const int64_t* wanted = labels.data();
    const size_t row_bytes = dim * sizeof(float);
    std::string error;
    {
        py::gil_scoped_release release;
        for (ssize_t i = 0; i < n && error.empty(); ++i) {
            if (wanted[i] < 0) {
                error = "read_rows: negative label " + std::to_string(wanted[i]);
                break;
            }
            char* into = reinterpret_cast<char*>(dst + static_cast<size_t>(i) * dim);
            const off_t at = static_cast<off_t>(wanted[i]) * static_cast<off_t>(row_bytes);
            size_t done = 0;
            while (done < row_bytes) {
                const ssize_t got = ::pread(fd, into + done, row_bytes - done, at + static_cast<off_t>(done));
                if (got < 0 && errno == EINTR) continue;
                if (got < 0) {
                    error = std::string("read_rows: pread: ") + std::strerror(errno);
                    break;
                }
                if (got == 0) {
                    error = "read_rows: short read of row " + std::to_string(wanted[i]);
                    break;
                }
                done += static_cast<size_t>(got);
            }
        }
    }
    if (!error.empty()) throw std::runtime_error(error);
    return out;
}

}  // namespace

PYBIND11_MODULE(_vsnative, m) {
    m.doc() = "hnswlib 0.8.0 HNSW index with a native allowed-label mask (sweep or ACORN-1) and exact search over labels";
    m.attr("HNSWLIB_VERSION") = VS_HNSWLIB_VERSION;
    m.attr("BUILD_FLAGS") = VS_BUILD_FLAGS;
    // The distance kernels hnswlib selected for this build and CPU (its headers pick them from
    // the compiler's target macros, then check the CPU at run time).
#if defined(USE_AVX512)
    m.attr("SIMD") = AVX512Capable() ? "avx512" : (AVXCapable() ? "avx" : "sse");
#elif defined(USE_AVX)
    m.attr("SIMD") = AVXCapable() ? "avx" : "sse";
#elif defined(USE_SSE)
    m.attr("SIMD") = "sse";
#else
    m.attr("SIMD") = "none";
#endif

    m.def("read_rows", &read_rows, py::arg("fd"), py::arg("labels"), py::arg("dim"),
          "Rows ``labels`` (int64, 1-D) of a file of float32 rows of ``dim`` on ``fd``: one pread each, "
          "the GIL released; RuntimeError on a negative label, a read error or a short read.");
    m.def(
        "_acorn_tuning",
        [](size_t cap, size_t min_seen, size_t budget, double sweep_density, size_t seed_batch) {
            g_acorn_tuning = AcornTuning{cap, min_seen, budget, sweep_density, seed_batch};
        },
        py::arg("cap") = 0, py::arg("min_seen") = 0, py::arg("budget") = 0, py::arg("sweep_density") = -1.0,
        py::arg("seed_batch") = 0,
        "Benchmarks only: ACORN parameters for later knn_query calls (process-wide; 0 / -1: defaults).");
    m.def(
        "_acorn_stats",
        [] {
            py::dict out;
            out["queries"] = g_acorn_counters.queries.exchange(0);
            out["expansions"] = g_acorn_counters.expansions.exchange(0);
            out["distances"] = g_acorn_counters.distances.exchange(0);
            out["lists"] = g_acorn_counters.lists.exchange(0);
            out["seeds"] = g_acorn_counters.seeds.exchange(0);
            return out;
        },
        "Work of the ACORN queries since the last call (summed; reset by the call): queries, "
        "expansions, distances, lists (two-hop link lists read), seeds (extra entry points).");

    m.def(
        "_force_live_search", [](bool on) { g_force_live.store(on); }, py::arg("on"),
        "Benchmarks only: every later knn_query takes the search used beside add_items (process-wide).");
    m.def(
        "_live_searches", [] { return g_live_searches.exchange(0); },
        "Queries answered while an add_items ran (the locking search) since the last call; resets.");

    py::class_<Index>(m, "Index")
        .def(py::init<const std::string&, int>(), py::arg("space"), py::arg("dim"))
        .def("init_index", &Index::init_index, py::arg("max_elements"), py::arg("M") = 16,
             py::arg("ef_construction") = 200, py::arg("random_seed") = 100,
             py::arg("allow_replace_deleted") = false)
        .def("load_index", &Index::load_index, py::arg("path_to_index"), py::arg("max_elements") = 0,
             py::arg("allow_replace_deleted") = false)
        .def("save_index", &Index::save_index, py::arg("path_to_index"))
        .def("copy_from", &Index::copy_from, py::arg("other"), py::arg("max_elements") = 0)
        .def("set_int8", &Index::set_int8, py::arg("lo"), py::arg("scale"))
        .def_property_readonly("int8", &Index::int8)
        .def("add_items", &Index::add_items, py::arg("data"), py::arg("ids") = py::none(),
             py::arg("num_threads") = -1, py::arg("replace_deleted") = false)
        .def("mark_deleted", &Index::mark_deleted, py::arg("label"))
        .def("unmark_deleted", &Index::unmark_deleted, py::arg("label"))
        .def("resize_index", &Index::resize_index, py::arg("new_size"))
        .def("set_ef", &Index::set_ef, py::arg("ef"))
        .def("get_items", &Index::get_items, py::arg("ids") = py::none(), py::arg("return_type") = "numpy")
        .def("get_ids_list", &Index::get_ids_list)
        .def("gather", &Index::gather, py::arg("labels"))
        .def("knn_query", &Index::knn_query, py::arg("data"), py::arg("k") = 1, py::arg("num_threads") = -1,
             py::arg("filter") = py::none(), py::arg("allowed") = py::none(), py::arg("strategy") = "sweep",
             py::arg("limit") = std::numeric_limits<size_t>::max())
        .def("exact_query", &Index::exact_query, py::arg("data"), py::arg("labels"), py::arg("k") = 1,
             py::arg("num_threads") = -1)
        .def("get_max_elements", &Index::max_elements)
        .def("get_current_count", &Index::element_count)
        .def("index_file_size", &Index::index_file_size)
        .def_property_readonly("space", &Index::space)
        .def_property_readonly("dim", &Index::dim)
        .def_property("ef", &Index::ef, &Index::set_ef)
        .def_property_readonly("max_elements", &Index::max_elements)
        .def_property_readonly("element_count", &Index::element_count)
        .def_property_readonly("deleted_count", &Index::deleted_count)
        .def_property_readonly("ef_construction", &Index::ef_construction)
        .def_property_readonly("M", &Index::M)
        .def_readwrite("num_threads", &Index::num_threads_default_)
        .def("__repr__", [](const Index& index) {
            return "<shard._vsnative.Index(space='" + index.space() + "', dim=" + std::to_string(index.dim()) + ")>";
        });
}
