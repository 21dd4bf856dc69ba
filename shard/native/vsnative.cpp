// shard._vsnative: hnswlib v0.8.0's HierarchicalNSW behind a pybind11 class that mirrors the
// parts of `hnswlib.Index` the shard uses, plus two searches the official binding lacks:
//
//   knn_query(..., allowed=mask)  graph search restricted to the labels set in a byte mask,
//                                 checked natively per candidate (no Python call per node);
//                                 short rows are padded (label -1, distance +inf).
//   exact_query(data, labels, k)  exact top-k over the given labels with the index's own SIMD
//                                 distance on its level-0 storage (no gather, no copy).
//
// Our own code. hnswlib's headers (Apache-2.0) are not in this repository: shard/native/build.py
// takes them from the hnswlib 0.8.0 sdist on PyPI (sha256-pinned) at build time, so the index
// file format is exactly hnswlib 0.8.0's: files saved here load in hnswlib.Index and back.
//
// Thread-safety is hnswlib's: searches (knn_query, exact_query, get_items) may run concurrently
// with each other, not with add_items, mark_deleted, unmark_deleted, resize_index or load_index.
// The GIL is released during searches, inserts, save and load.

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <queue>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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
using Hnsw = hnswlib::HierarchicalNSW<float>;

constexpr tableint kAbsent = std::numeric_limits<tableint>::max();

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

    // ---- construction, persistence ---------------------------------------------------------

    void init_index(size_t max_elements, size_t M, size_t ef_construction, size_t random_seed,
                    bool allow_replace_deleted) {
        if (alg_) {
            throw std::runtime_error("The index is already initiated.");
        }
        alg_ = std::make_unique<Hnsw>(space_.get(), max_elements, M, ef_construction, random_seed,
                                      allow_replace_deleted);
        alg_->ef_ = default_ef_;
        cur_l_ = 0;
        ep_added_ = false;
        invalidate_table();
    }

    void load_index(const std::string& path, size_t max_elements, bool allow_replace_deleted) {
        std::unique_ptr<Hnsw> loaded;
        {
            py::gil_scoped_release release;
            loaded = std::make_unique<Hnsw>(space_.get(), path, false, max_elements, allow_replace_deleted);
        }
        alg_ = std::move(loaded);
        cur_l_ = alg_->cur_element_count;
        ep_added_ = alg_->cur_element_count > 0;
        invalidate_table();
    }

    void save_index(const std::string& path) {
        Hnsw& alg = inited();
        py::gil_scoped_release release;
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
        invalidate_table();
        size_t start = 0;
        if (!ep_added_ && rows > 0) {
            // The first point alone, so that concurrent inserts find an entry point.
            std::vector<float> norm(dim_);
            const float* vector = items.data(0);
            if (normalize_) {
                normalize_vector(vector, norm.data());
                vector = norm.data();
            }
            alg.addPoint(vector, ids.empty() ? cur_l_ : ids[0], replace_deleted);
            start = 1;
            ep_added_ = true;
        }
        {
            py::gil_scoped_release release;
            std::vector<float> norm(normalize_ ? static_cast<size_t>(num_threads) * dim_ : 0);
            parallel_for(start, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* vector = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(vector, out);
                    vector = out;
                }
                alg.addPoint(vector, ids.empty() ? cur_l_ + row : ids[row], replace_deleted);
            });
        }
        cur_l_ += rows;
    }

    void mark_deleted(size_t label) { inited().markDelete(label); }

    void unmark_deleted(size_t label) { inited().unmarkDelete(label); }

    void resize_index(size_t new_size) {
        inited().resizeIndex(new_size);
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

    std::vector<labeltype> get_ids_list() {
        Hnsw& alg = inited();
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
    // labels, rows padded with label -1 and distance +inf when fewer than k allowed are found.
    py::tuple knn_query(const py::object& input, size_t k, int num_threads,
                        const std::function<bool(labeltype)>& filter, const py::object& allowed) {
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
        const bool pad = !allowed.is_none();
        py::array mask_array;
        std::unique_ptr<hnswlib::BaseFilterFunctor> functor;
        if (pad) {
            mask_array = checked_mask(allowed);
            functor = std::make_unique<MaskFilter>(static_cast<const uint8_t*>(mask_array.data()),
                                                   static_cast<size_t>(mask_array.shape(0)));
        } else if (filter) {
            functor = std::make_unique<CallbackFilter>(filter);
        }
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
            hnswlib::BaseFilterFunctor* isIdAllowed = functor.get();
            parallel_for(0, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* query = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(query, out);
                    query = out;
                }
                auto result = alg.searchKnn(query, k, isIdAllowed);
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
            // (internal id, label) of every live wanted label, in storage order for locality.
            std::vector<std::pair<tableint, int64_t>> targets;
            targets.reserve(m);
            resolve(alg, wanted, m, &targets);
            std::sort(targets.begin(), targets.end());
            std::vector<float> norm(normalize_ ? static_cast<size_t>(num_threads) * dim_ : 0);
            const char* base = alg.data_level0_memory_ + alg.offsetData_;
            const size_t stride = alg.size_data_per_element_;
            auto distance = alg.fstdistfunc_;
            void* param = alg.dist_func_param_;
            parallel_for(0, rows, num_threads, [&](size_t row, size_t thread_id) {
                const float* query = items.data(row);
                if (normalize_) {
                    float* out = norm.data() + thread_id * dim_;
                    normalize_vector(query, out);
                    query = out;
                }
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

    // Label -> internal id for exact_query: a dense table when labels are dense (the shard's
    // are 0..n-1), built once after each mutation; else hnswlib's own label_lookup_ map.
    void resolve(const Hnsw& alg, const int64_t* wanted, size_t m,
                 std::vector<std::pair<tableint, int64_t>>* targets) {
        const std::vector<tableint>* table = dense_table(alg);
        if (table != nullptr) {
            const size_t size = table->size();
            for (size_t i = 0; i < m; i++) {
                int64_t label = wanted[i];
                if (label < 0 || static_cast<size_t>(label) >= size) continue;
                tableint internal = (*table)[label];
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

    const std::vector<tableint>* dense_table(const Hnsw& alg) {
        int state = table_state_.load(std::memory_order_acquire);
        if (state == kTableStale) {
            std::lock_guard<std::mutex> guard(table_mutex_);
            state = table_state_.load(std::memory_order_relaxed);
            if (state == kTableStale) {
                const size_t count = alg.cur_element_count;
                labeltype max_label = 0;
                for (size_t i = 0; i < count; i++) {
                    max_label = std::max(max_label, alg.getExternalLabel(static_cast<tableint>(i)));
                }
                if (count > 0 && max_label < 2 * count + 1024) {
                    table_.assign(max_label + 1, kAbsent);
                    for (size_t i = 0; i < count; i++) {
                        table_[alg.getExternalLabel(static_cast<tableint>(i))] = static_cast<tableint>(i);
                    }
                    state = kTableDense;
                } else {
                    table_.clear();
                    state = kTableSparse;
                }
                table_state_.store(state, std::memory_order_release);
            }
        }
        return state == kTableDense ? &table_ : nullptr;
    }

    void invalidate_table() { table_state_.store(kTableStale, std::memory_order_release); }

    static constexpr int kTableStale = 0;
    static constexpr int kTableDense = 1;
    static constexpr int kTableSparse = 2;

    std::string space_name_;
    int dim_;
    bool normalize_ = false;
    size_t default_ef_ = 10;
    bool ep_added_ = true;
    size_t cur_l_ = 0;
    // Declared before alg_, which points into it: destroyed after it.
    std::unique_ptr<hnswlib::SpaceInterface<float>> space_;
    std::unique_ptr<Hnsw> alg_;
    std::mutex table_mutex_;
    std::atomic<int> table_state_{kTableStale};
    std::vector<tableint> table_;
};

}  // namespace

PYBIND11_MODULE(_vsnative, m) {
    m.doc() = "hnswlib 0.8.0 HNSW index with a native allowed-label mask and exact search over labels";
    m.attr("HNSWLIB_VERSION") = VS_HNSWLIB_VERSION;
    m.attr("BUILD_FLAGS") = VS_BUILD_FLAGS;

    py::class_<Index>(m, "Index")
        .def(py::init<const std::string&, int>(), py::arg("space"), py::arg("dim"))
        .def("init_index", &Index::init_index, py::arg("max_elements"), py::arg("M") = 16,
             py::arg("ef_construction") = 200, py::arg("random_seed") = 100,
             py::arg("allow_replace_deleted") = false)
        .def("load_index", &Index::load_index, py::arg("path_to_index"), py::arg("max_elements") = 0,
             py::arg("allow_replace_deleted") = false)
        .def("save_index", &Index::save_index, py::arg("path_to_index"))
        .def("add_items", &Index::add_items, py::arg("data"), py::arg("ids") = py::none(),
             py::arg("num_threads") = -1, py::arg("replace_deleted") = false)
        .def("mark_deleted", &Index::mark_deleted, py::arg("label"))
        .def("unmark_deleted", &Index::unmark_deleted, py::arg("label"))
        .def("resize_index", &Index::resize_index, py::arg("new_size"))
        .def("set_ef", &Index::set_ef, py::arg("ef"))
        .def("get_items", &Index::get_items, py::arg("ids") = py::none(), py::arg("return_type") = "numpy")
        .def("get_ids_list", &Index::get_ids_list)
        .def("knn_query", &Index::knn_query, py::arg("data"), py::arg("k") = 1, py::arg("num_threads") = -1,
             py::arg("filter") = py::none(), py::arg("allowed") = py::none())
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
