// args.h: lfmq-run's command line: options with and without values, token id lists, KV cache types.
#pragma once

#include "output.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace lfmq_run {

// ---------------------------------------------------------------------------------------------- arguments

struct Args {
    std::map<std::string, std::string> kv;
    std::vector<std::string> flags;
    bool has(const std::string & k) const { return kv.count(k) || std::count(flags.begin(), flags.end(), k); }
    std::string str(const std::string & k, const std::string & dflt = "") const {
        auto it = kv.find(k);
        return it == kv.end() ? dflt : it->second;
    }
    long num(const std::string & k, long dflt) const {
        auto it = kv.find(k);
        if (it == kv.end()) return dflt;
        char * end = nullptr;
        long v = strtol(it->second.c_str(), &end, 10);
        if (it->second.empty() || *end) usage(k + " takes an integer, not '" + it->second + "'");
        return v;
    }
};

inline Args parse(int argc, char ** argv, const std::vector<std::string> & valued, const std::vector<std::string> & bare) {
    Args a;
    for (int i = 2; i < argc; i++) {
        std::string k = argv[i];
        if (std::find(bare.begin(), bare.end(), k) != bare.end()) { a.flags.push_back(k); continue; }
        if (std::find(valued.begin(), valued.end(), k) == valued.end()) usage("unknown option " + k);
        if (i + 1 >= argc) usage(k + " needs a value");
        a.kv[k] = argv[++i];
    }
    return a;
}

inline std::vector<llama_token> parse_ids(const std::string & s) {
    std::vector<llama_token> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char * end = nullptr;
        long v = strtol(item.c_str(), &end, 10);
        if (item.empty() || *end) usage("token ids are integers separated by commas, not '" + s + "'");
        out.push_back(static_cast<llama_token>(v));
    }
    return out;
}

inline ggml_type cache_type(const std::string & name) {
    static const std::map<std::string, ggml_type> types = {
        {"f32", GGML_TYPE_F32}, {"f16", GGML_TYPE_F16}, {"bf16", GGML_TYPE_BF16}, {"q8_0", GGML_TYPE_Q8_0},
        {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1}, {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}};
    auto it = types.find(name);
    if (it == types.end()) usage("unknown KV cache type " + name);
    return it->second;
}

}  // namespace lfmq_run
