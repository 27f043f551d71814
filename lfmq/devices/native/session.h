// session.h: one llama.cpp model and context as lfmq-run drives them (as lfmq.llama.engine does in Python), the
// settings from the command line, and the process's memory from /proc/self/status.
#pragma once

#include "args.h"

#include "ggml-cpu.h"  // ggml_threadpool_new / ggml_threadpool_free

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace lfmq_run {

// ---------------------------------------------------------------------------------------------- llama.cpp

using clk = std::chrono::steady_clock;
inline double ms_since(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

struct Settings {
    uint32_t n_ctx = 4096, n_batch = 512, n_ubatch = 512;
    int threads = 0, flash_attn = -1;
    bool use_mmap = true;
    std::string type_k = "f16", type_v = "f16";
};

struct Session {
    llama_model * model = nullptr;
    llama_context * ctx = nullptr;
    const llama_vocab * vocab = nullptr;
    llama_batch batch{};
    ggml_threadpool * threadpool = nullptr;
    Settings s;
    int n_vocab = 0;
    ~Session() {
        if (batch.token) llama_batch_free(batch);
        if (ctx) llama_free(ctx);
        if (threadpool) ggml_threadpool_free(threadpool);
        if (model) llama_model_free(model);
    }

    void open(const std::string & path, const Settings & settings) {
        s = settings;
        s.n_ubatch = std::min(s.n_ubatch, s.n_batch);
        llama_model_params mp = llama_model_default_params();
        mp.load_mode = s.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
        model = llama_model_load_from_file(path.c_str(), mp);
        if (!model) fail(with_log("cannot load the model " + path));
        vocab = llama_model_get_vocab(model);
        n_vocab = llama_vocab_n_tokens(vocab);
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = s.n_ctx;
        cp.n_batch = s.n_batch;
        cp.n_ubatch = s.n_ubatch;
        cp.n_seq_max = 1;
        cp.n_threads = cp.n_threads_batch = s.threads;
        cp.type_k = cache_type(s.type_k);
        cp.type_v = cache_type(s.type_v);
        cp.flash_attn_type = s.flash_attn < 0 ? LLAMA_FLASH_ATTN_TYPE_AUTO
                             : s.flash_attn ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.no_perf = true;
        ctx = llama_init_from_model(model, cp);
        if (!ctx) fail(with_log("cannot create a context for " + path));
        attach_threadpool();
        batch = llama_batch_init(static_cast<int32_t>(s.n_batch), 0, 1);
    }

    // One set of compute threads for the whole run, as llama-bench and llama-cli keep: without it, a build without
    // OpenMP (every device bundle) starts and joins its threads on every llama_decode, which costs a token's
    // decode a measurable share on a small model.
    void attach_threadpool() {
        ggml_threadpool_params tpp = ggml_threadpool_params_default(s.threads);
        threadpool = ggml_threadpool_new(&tpp);
        if (!threadpool) fail("cannot start " + std::to_string(s.threads) + " compute threads");
        llama_attach_threadpool(ctx, threadpool, nullptr);
    }

    void reset() { llama_memory_clear(llama_get_memory(ctx), true); }

    // Evaluate tokens at positions start.., in batches of n_batch; logits for the final token only.
    void decode(const std::vector<llama_token> & tokens, int start) {
        const size_t n = tokens.size();
        if (start + n > s.n_ctx) fail("the context of " + std::to_string(s.n_ctx) + " tokens is too small: pass -c");
        for (size_t lo = 0; lo < n; lo += s.n_batch) {
            const size_t m = std::min<size_t>(s.n_batch, n - lo);
            batch.n_tokens = static_cast<int32_t>(m);
            for (size_t i = 0; i < m; i++) {
                if (tokens[lo + i] < 0 || tokens[lo + i] >= n_vocab) fail("token id out of range: " + std::to_string(tokens[lo + i]));
                batch.token[i] = tokens[lo + i];
                batch.pos[i] = static_cast<llama_pos>(start + lo + i);
                batch.n_seq_id[i] = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i] = lo + i == n - 1;
            }
            int rc = llama_decode(ctx, batch);
            if (rc != 0) fail(with_log("llama_decode failed with code " + std::to_string(rc)));
        }
        llama_synchronize(ctx);
    }

    llama_token argmax() const {
        const float * row = llama_get_logits_ith(ctx, -1);
        if (!row) fail(with_log("no logits after decode"));
        return static_cast<llama_token>(std::max_element(row, row + n_vocab) - row);  // first maximum, as numpy
    }

    // [[id, logit], ...] of the k largest logits of the last decode, largest first
    std::string top_logits(int k) const {
        const float * row = llama_get_logits_ith(ctx, -1);
        std::vector<int> ids(static_cast<size_t>(n_vocab));
        for (int i = 0; i < n_vocab; i++) ids[i] = i;
        k = std::min(k, n_vocab);
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [row](int x, int y) { return row[x] > row[y]; });
        std::string out = "[";
        for (int i = 0; i < k; i++) {
            char b[64];
            snprintf(b, sizeof b, "%s[%d,%.9g]", i ? "," : "", ids[i], row[ids[i]]);
            out += b;
        }
        return out + "]";
    }

    std::string piece(llama_token t) const {
        char buf[256];
        int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, false);
        if (n < 0) {
            std::string big(static_cast<size_t>(-n), '\0');
            n = llama_token_to_piece(vocab, t, big.data(), -n, 0, false);
            return big.substr(0, std::max(n, 0));
        }
        return std::string(buf, static_cast<size_t>(n));
    }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special) const {
        int need = -llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()), nullptr, 0, add_special, true);
        std::vector<llama_token> out(static_cast<size_t>(std::max(need, 0)));
        if (need <= 0 || llama_tokenize(vocab, text.c_str(), static_cast<int32_t>(text.size()), out.data(), need,
                                        add_special, true) < 0) fail("cannot tokenize the prompt");
        return out;
    }

    // lfmq.bench.case.CHAT, rendered with llama.cpp's built-in template for the model's (ChatML for LFM2)
    std::vector<llama_token> chat_tokens() const {
        const llama_chat_message chat[2] = {
            {"system", "You are a helpful assistant that extracts structured data from messages. Answer with JSON "
                       "only, using the keys name, date, amount and currency."},
            {"user", "Hi, this is Dana Whitfield. I paid the invoice from March 3rd, 2026 this morning: 1,284.50 euros "
                     "by bank transfer, reference INV-2026-0117. Could you confirm that it arrived and send the receipt "
                     "to my office address? Thanks a lot, Dana."}};
        const char * tmpl = llama_model_chat_template(model, nullptr);
        std::vector<char> buf(4096);
        int n = llama_chat_apply_template(tmpl, chat, 2, true, buf.data(), static_cast<int32_t>(buf.size()));
        if (n < 0) n = llama_chat_apply_template("chatml", chat, 2, true, buf.data(), static_cast<int32_t>(buf.size()));
        if (n < 0 || n > static_cast<int>(buf.size())) fail("cannot render the chat prompt for time to first token");
        return tokenize(std::string(buf.data(), static_cast<size_t>(n)), llama_vocab_get_add_bos(vocab));
    }

    std::string describe() const {
        char buf[256];
        llama_model_desc(model, buf, sizeof buf);
        return buf;
    }
};

inline std::map<std::string, double> memory_status() {
    std::map<std::string, double> out;
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line)) {
        auto colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string key = line.substr(0, colon);
        if (key == "VmHWM" || key == "VmRSS" || key == "RssAnon" || key == "RssFile") {
            std::string lower = key;
            std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
            out[lower] = strtod(line.c_str() + colon + 1, nullptr) / 1024.0;  // kB -> MB
        }
    }
    return out;
}

inline Settings settings_from(const Args & a) {
    Settings s;
    s.threads = static_cast<int>(a.num("-t", std::max(1u, std::thread::hardware_concurrency())));
    s.n_ctx = static_cast<uint32_t>(a.num("-c", 4096));
    s.n_batch = static_cast<uint32_t>(a.num("-b", 512));
    s.n_ubatch = static_cast<uint32_t>(a.num("-ub", 512));
    long mmap = a.num("--mmap", 1), fa = a.num("-fa", -1);
    if (mmap != 0 && mmap != 1) usage("--mmap takes 0 or 1");
    if (fa < -1 || fa > 1) usage("-fa takes -1, 0 or 1");
    s.use_mmap = mmap == 1;
    s.flash_attn = static_cast<int>(fa);
    s.type_k = a.str("-ctk", "f16");
    s.type_v = a.str("-ctv", "f16");
    cache_type(s.type_k);
    cache_type(s.type_v);
    if (s.threads < 1 || s.n_ctx < 1 || s.n_batch < 1 || s.n_ubatch < 1) usage("-t, -c, -b and -ub must be positive");
    return s;
}

inline std::vector<llama_token> random_tokens(std::mt19937_64 & rng, int n_vocab, long n) {
    std::uniform_int_distribution<int> pick(0, n_vocab - 1);
    std::vector<llama_token> out(static_cast<size_t>(n));
    for (auto & t : out) t = pick(rng);
    return out;
}

}  // namespace lfmq_run
