#include "vectorsearch_client.h"

#include <cstring>
#include <utility>

namespace vectorsearch {

namespace {

grpc::Status InvalidArgument(const std::string& message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "vectorsearch client: " + message);
}

// Checks that `values` is a whole number of rows of `dimension`; sets *rows.
grpc::Status CountRows(const std::vector<float>& values, uint32_t dimension, size_t* rows) {
  if (dimension == 0) return InvalidArgument("dimension must be positive");
  if (values.size() % dimension != 0) {
    return InvalidArgument(std::to_string(values.size()) + " floats are not a whole number of rows of dimension " +
                           std::to_string(dimension));
  }
  *rows = values.size() / dimension;
  return grpc::Status::OK;
}

void FillVectors(const std::vector<float>& values, uint32_t dimension, v1::Vectors* out) {
  out->set_dimension(dimension);
  out->set_packed(PackFloat32LE(values.data(), values.size()));
}

}  // namespace

std::string PackFloat32LE(const float* values, size_t count) {
  static_assert(sizeof(float) == 4, "float must be IEEE-754 binary32");
  std::string bytes(count * 4, '\0');
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (count != 0) std::memcpy(bytes.data(), values, count * 4);
#else
  for (size_t i = 0; i < count; ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    bytes[4 * i + 0] = static_cast<char>(bits & 0xff);
    bytes[4 * i + 1] = static_cast<char>((bits >> 8) & 0xff);
    bytes[4 * i + 2] = static_cast<char>((bits >> 16) & 0xff);
    bytes[4 * i + 3] = static_cast<char>((bits >> 24) & 0xff);
  }
#endif
  return bytes;
}

VectorSearchClient::VectorSearchClient(const std::string& address)
    : VectorSearchClient(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())) {}

VectorSearchClient::VectorSearchClient(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(v1::SearchService::NewStub(channel_)) {}

void VectorSearchClient::Prepare(grpc::ClientContext* context) const {
  context->set_deadline(std::chrono::system_clock::now() + timeout_);
}

bool VectorSearchClient::WaitForConnected(std::chrono::milliseconds timeout) {
  return channel_->WaitForConnected(std::chrono::system_clock::now() + timeout);
}

grpc::Status VectorSearchClient::CreateCollection(const std::string& name, uint32_t dimension, v1::Metric metric,
                                                  bool* created, const v1::HnswParams* hnsw) {
  v1::CreateCollectionRequest request;
  v1::CollectionSpec* spec = request.mutable_spec();
  spec->set_name(name);
  spec->set_dimension(dimension);
  spec->set_metric(metric);
  if (hnsw != nullptr) *spec->mutable_hnsw() = *hnsw;
  v1::CreateCollectionResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->CreateCollection(&context, request, &response);
  if (status.ok() && created != nullptr) *created = response.created();
  return status;
}

grpc::Status VectorSearchClient::Upsert(const std::string& collection, const std::vector<std::string>& ids,
                                        const std::vector<float>& vectors, uint32_t dimension,
                                        const std::vector<v1::Metadata>& metadata, uint32_t* upserted) {
  size_t rows = 0;
  grpc::Status checked = CountRows(vectors, dimension, &rows);
  if (!checked.ok()) return checked;
  if (rows != ids.size()) {
    return InvalidArgument(std::to_string(ids.size()) + " ids but " + std::to_string(rows) + " vectors");
  }
  if (!metadata.empty() && metadata.size() != ids.size()) {
    return InvalidArgument(std::to_string(ids.size()) + " ids but " + std::to_string(metadata.size()) +
                           " metadata entries");
  }
  v1::UpsertRequest request;
  request.set_collection(collection);
  request.mutable_items()->Reserve(static_cast<int>(ids.size()));
  for (size_t i = 0; i < ids.size(); ++i) {
    v1::ItemMetadata* item = request.add_items();
    item->set_id(ids[i]);
    if (!metadata.empty()) *item->mutable_metadata() = metadata[i];
  }
  FillVectors(vectors, dimension, request.mutable_vectors());
  v1::UpsertResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->Upsert(&context, request, &response);
  if (status.ok() && upserted != nullptr) *upserted = response.upserted();
  return status;
}

grpc::Status VectorSearchClient::Search(const std::string& collection, const std::vector<float>& queries,
                                        uint32_t dimension, uint32_t k, SearchResult* result,
                                        const SearchOptions& options) {
  size_t rows = 0;
  grpc::Status checked = CountRows(queries, dimension, &rows);
  if (!checked.ok()) return checked;
  v1::SearchRequest request;
  request.set_collection(collection);
  FillVectors(queries, dimension, request.mutable_queries());
  request.set_k(k);
  request.set_ef(options.ef);
  request.set_require_all_shards(options.require_all_shards);
  if (options.filter != nullptr) *request.mutable_filter() = *options.filter;
  v1::SearchResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->Search(&context, request, &response);
  if (!status.ok() || result == nullptr) return status;
  result->hits.clear();
  result->hits.reserve(static_cast<size_t>(response.results_size()));
  for (const v1::QueryHits& query : response.results()) {
    std::vector<SearchHit> hits;
    hits.reserve(static_cast<size_t>(query.hits_size()));
    for (const v1::Hit& hit : query.hits()) hits.push_back(SearchHit{hit.id(), hit.distance()});
    result->hits.push_back(std::move(hits));
  }
  result->partial = response.partial();
  result->failed_shards.assign(response.failed_shards().begin(), response.failed_shards().end());
  return status;
}

grpc::Status VectorSearchClient::Get(const std::string& collection, const std::vector<std::string>& ids,
                                     bool include_vectors, GetResult* result) {
  v1::GetRequest request;
  request.set_collection(collection);
  for (const std::string& id : ids) request.add_ids(id);
  request.set_include_vectors(include_vectors);
  v1::GetResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->Get(&context, request, &response);
  if (!status.ok() || result == nullptr) return status;
  result->items.clear();
  result->items.reserve(static_cast<size_t>(response.items_size()));
  for (v1::Item& item : *response.mutable_items()) {
    GetItem out;
    out.id = std::move(*item.mutable_id());
    out.metadata.Swap(item.mutable_metadata());
    out.vector.assign(item.vector().begin(), item.vector().end());
    result->items.push_back(std::move(out));
  }
  result->missing_ids.assign(response.missing_ids().begin(), response.missing_ids().end());
  return status;
}

grpc::Status VectorSearchClient::Delete(const std::string& collection, const std::vector<std::string>& ids,
                                        uint32_t* deleted) {
  v1::DeleteRequest request;
  request.set_collection(collection);
  for (const std::string& id : ids) request.add_ids(id);
  v1::DeleteResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->Delete(&context, request, &response);
  if (status.ok() && deleted != nullptr) *deleted = response.deleted();
  return status;
}

grpc::Status VectorSearchClient::DropCollection(const std::string& name, bool* dropped) {
  v1::DropCollectionRequest request;
  request.set_collection(name);
  v1::DropCollectionResponse response;
  grpc::ClientContext context;
  Prepare(&context);
  grpc::Status status = stub_->DropCollection(&context, request, &response);
  if (status.ok() && dropped != nullptr) *dropped = response.dropped();
  return status;
}

}  // namespace vectorsearch
